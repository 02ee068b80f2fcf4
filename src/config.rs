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
//!     "rate": "1000/m",
//!     "key": { "type": "header", "name": "X-Agent-Token", "secret": true },
//!     "on_missing_key": { "reject": 401 },
//!     "on_store_error": "open",
//!     "methods": ["POST"],
//!     "timeout_ms": 50
//! }"#;
//! let config: PolicyConfig = serde_json::from_str(json).unwrap();
//! let policy = config.into_policy().unwrap();
//! ```

use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::{
    Algorithm, ClientIp, Error, FailMode, ForwardedHeader, Key, Mode, OnMissingKey, Policy, Rate,
    policy::{DEFAULT_PREFIX, DEFAULT_TIMEOUT},
};

/// A [`Policy`] as a configuration file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// See [`Policy::new`].
    pub name: String,
    /// See [`Policy::rate`].
    pub rate: Rate,
    /// See [`Policy::algorithm`].
    #[serde(default)]
    pub algorithm: Algorithm,
    /// See [`Policy::key`].
    pub key: KeyConfig,
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
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT.as_millis() as u64
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
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
        let field = |name: &str| format!("policies.{}.{name}", self.name);
        let mut policy = Policy::new(self.name.clone())
            .rate(self.rate)
            .algorithm(self.algorithm)
            .key(self.key.into_key()?)
            .on_missing_key(self.on_missing_key)
            .mode(self.mode)
            .on_store_error(self.on_store_error)
            .timeout(Duration::from_millis(self.timeout_ms))
            .prefix(self.prefix)
            .legacy_headers(self.legacy_headers);
        if !self.methods.is_empty() {
            let methods = self
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        Error::config(field("methods"), format!("{m:?} is not an HTTP method"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            policy = policy.methods(methods);
        }
        Ok(policy)
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
        assert_eq!(config.rate, Rate::per_hour(10));
        let again: PolicyConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        let compiled = config.into_policy().unwrap().compile().unwrap();
        assert_eq!(compiled.methods, Some(vec![Method::POST]));
        assert_eq!(compiled.on_store_error, FailMode::Closed);
        assert_eq!(compiled.key_head, "app:rl:login:{");
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
