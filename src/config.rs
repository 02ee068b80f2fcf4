//! Policies from a configuration file, through serde.
//!
//! [`PolicyConfig`] is the file form of a [`Policy`]; everything a closure
//! is needed for (custom keys, a custom 429 body) stays in code.
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
//! let policy = config.into_policy().unwrap();
//! ```
//!
//! [`PolicyFile`] holds several, as `[[policies]]` tables in TOML.

use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::{
    Algorithm, ClientIp, Clock, Cost, Error, FailMode, ForwardedHeader, Key, Limit, Mode,
    OnMissingKey, Policy, Rate,
    policy::{Breaker, DEFAULT_PREFIX, DEFAULT_TIMEOUT},
};

/// Several policies, e.g. a TOML file of `[[policies]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// A [`Policy`] as a configuration file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// See [`Policy::new`].
    pub name: String,
    /// See [`Policy::rate`]: one rate (`"1000/m"`) or several
    /// (`["10/s", "1000/m"]`).
    #[serde(default, with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub rate: Vec<Rate>,
    /// See [`Policy::limit`]: limits with a burst of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitConfig>,
    /// See [`Policy::burst`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// See [`Policy::algorithm`].
    #[serde(default)]
    pub algorithm: Algorithm,
    /// See [`Policy::clock`].
    #[serde(default)]
    pub clock: Clock,
    /// See [`Policy::key`].
    pub key: KeyConfig,
    /// See [`Policy::cost`]; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostConfig>,
    /// See [`Policy::on_missing_key`].
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// See [`Policy::mode`].
    #[serde(default)]
    pub mode: Mode,
    /// See [`Policy::on_store_error`].
    #[serde(default)]
    pub on_store_error: FailMode,
    /// See [`Policy::timeout`], in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// See [`Policy::methods`]; empty means all methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// See [`Policy::prefix`].
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// See [`Policy::legacy_headers`].
    #[serde(default)]
    pub legacy_headers: bool,
    /// See [`Policy::block_cache`]: how many denied keys to remember.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_cache: Option<usize>,
    /// See [`Policy::fallback_divisor`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_divisor: Option<u64>,
    /// See [`Policy::breaker`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT.as_millis() as u64
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

/// A [`Limit`] as a configuration file writes it: `{ rate = "10/s", burst = 20 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The rate.
    pub rate: Rate,
    /// Its GCRA burst size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A [`Cost`] as a configuration file writes it: a number, or
/// `{ header = "X-Event-Count" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CostConfig {
    /// See [`Cost::fixed`].
    Fixed(u64),
    /// See [`Cost::header`].
    Header {
        /// The header's name.
        header: String,
    },
}

/// A [`Key`] as a configuration file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The key this describes.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad proxy CIDR or IPv6 prefix.
    pub fn into_key(self) -> Result<Key, Error> {
        let mut key = match self.source {
            KeySource::Header { name } => Key::header(&name),
            KeySource::ClientIp {
                trusted_proxies,
                header,
                ipv6_prefix,
            } => {
                let mut ip = ClientIp::new()
                    .trust_proxies(trusted_proxies)?
                    .header(header);
                if let Some(prefix) = ipv6_prefix {
                    ip = ip.ipv6_prefix(prefix)?;
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
            key = key.or(fallback.into_key()?);
        }
        Ok(key)
    }
}

impl PolicyConfig {
    /// The policy this describes; [`RateLimitLayer::new`](crate::RateLimitLayer::new)
    /// checks the rest.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field that cannot be used.
    pub fn into_policy(self) -> Result<Policy, Error> {
        let name = self.name.clone();
        self.build_policy().map_err(|error| error.in_policy(&name))
    }

    fn build_policy(self) -> Result<Policy, Error> {
        let mut policy = Policy::new(self.name.clone())
            .algorithm(self.algorithm)
            .clock(self.clock)
            .key(self.key.into_key()?)
            .on_missing_key(self.on_missing_key)
            .mode(self.mode)
            .on_store_error(self.on_store_error)
            .timeout(Duration::from_millis(self.timeout_ms))
            .prefix(self.prefix)
            .legacy_headers(self.legacy_headers);
        for rate in self.rate {
            policy = policy.rate(rate);
        }
        for limit in self.limits {
            let with_burst = Limit::new(limit.rate);
            policy = policy.limit(limit.burst.map_or(with_burst, |b| with_burst.burst(b)));
        }
        if let Some(burst) = self.burst {
            policy = policy.burst(burst);
        }
        if let Some(capacity) = self.block_cache {
            policy = policy.block_cache(capacity);
        }
        if let Some(divisor) = self.fallback_divisor {
            policy = policy.fallback_divisor(divisor);
        }
        if let Some(breaker) = self.breaker {
            policy = policy.breaker(breaker);
        }
        match self.cost {
            Some(CostConfig::Fixed(cost)) => policy = policy.cost(Cost::fixed(cost)),
            Some(CostConfig::Header { header }) => policy = policy.cost(Cost::header(&header)),
            None => {}
        }
        if !self.methods.is_empty() {
            let methods = self
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        Error::config("methods", format!("{m:?} is not an HTTP method"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            policy = policy.methods(methods);
        }
        Ok(policy)
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
        let policy = config.into_policy().unwrap();
        policy.validate().unwrap();
        assert_eq!(policy.methods, Some(vec![Method::POST]));
        assert_eq!(policy.on_store_error, FailMode::Closed);
        assert_eq!(policy.prefix, "app:rl:");
    }

    #[test]
    fn defaults_are_the_builders() {
        let json = r#"{"name": "p", "rate": "5/s", "key": {"type": "user"}}"#;
        let config: PolicyConfig = serde_json::from_str(json).unwrap();
        let policy = config.into_policy().unwrap();
        assert_eq!(policy.timeout, DEFAULT_TIMEOUT);
        assert_eq!(policy.on_missing_key, OnMissingKey::default());
        assert_eq!(policy.on_store_error, FailMode::Open);
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
                .unwrap_err()
                .to_string()
                .contains("trusted_proxies")
        );
        let config: PolicyConfig = serde_json::from_str(
            r#"{"name":"p","rate":"5/s","key":{"type":"user"},"methods":["GE T"]}"#,
        )
        .unwrap();
        assert!(
            config
                .into_policy()
                .unwrap_err()
                .to_string()
                .contains("policies.p.methods")
        );
    }
}
