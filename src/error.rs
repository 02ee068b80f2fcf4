//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong: a bad configuration (found when the layer is
/// built, never at the first request) or a store that failed to answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rate string or value that is not a valid [`Rate`](crate::Rate).
    #[error("invalid rate {input:?}: {reason}")]
    InvalidRate {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A policy or store setting that cannot work, named as a configuration
    /// file spells it: `policies.<policy>.<field>` for a policy's setting,
    /// else `<field>`.
    #[error("invalid `{}`: {reason}", path(policy.as_deref(), field))]
    Config {
        /// The policy the setting belongs to, if any.
        policy: Option<String>,
        /// The setting within it, e.g. `rate`, `burst`, `key.header`; or
        /// one outside any policy, e.g. `redis.url`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Redis answered with an error or the connection failed.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the limiter's script never returns.
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(String),
    /// The store did not answer in time.
    #[error("the rate-limit store did not answer within {0:?}")]
    Timeout(Duration),
}

fn path(policy: Option<&str>, field: &str) -> String {
    match policy {
        Some(policy) => format!("policies.{policy}.{field}"),
        None => field.to_owned(),
    }
}

impl Error {
    pub(crate) fn invalid_rate(input: impl Into<String>, reason: &'static str) -> Self {
        Self::InvalidRate {
            input: input.into(),
            reason,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            policy: None,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// This error, as one of the settings of the policy called `name` (a
    /// policy without a name is named by the error itself).
    pub(crate) fn in_policy(self, name: &str) -> Self {
        match self {
            Self::Config {
                policy: None,
                field,
                reason,
            } if !name.is_empty() => Self::Config {
                policy: Some(name.to_owned()),
                field,
                reason,
            },
            other => other,
        }
    }

    /// For a configuration error, the setting's full name, e.g.
    /// `policies.telemetry.burst`.
    pub fn config_path(&self) -> Option<String> {
        match self {
            Self::Config { policy, field, .. } => Some(path(policy.as_deref(), field)),
            _ => None,
        }
    }

    /// `true` for errors of the store (Redis down, slow or confused), as
    /// opposed to configuration errors.
    pub fn is_store_error(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::UnexpectedReply(_) | Self::Timeout(_)
        )
    }
}
