//! Rate-limit fields on responses: `RateLimit-Policy` and `RateLimit` from
//! draft-ietf-httpapi-ratelimit-headers, `Retry-After`, and optionally the
//! legacy `X-RateLimit-*` trio.

use std::{io::Write as _, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, header::RETRY_AFTER};

use crate::{
    Decision,
    algorithm::{Limit, whole_seconds},
    policy::Compiled,
};

/// `RateLimit-Policy`: the quota, e.g. `"telemetry";q=1000;w=60`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left, e.g. `"telemetry";r=0;t=42`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy: the limit per window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy: requests left in the window.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy: seconds until the window resets.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A policy's `RateLimit-Policy` value and the item name of each limit,
/// computed once. A policy with one limit is one item named after it; with
/// several, each is named `<policy>-<window>s`, e.g.
/// `"telemetry-1s";q=10;w=1, "telemetry-60s";q=1000;w=60`. Policy names are
/// letters, digits and `-_.`, so they need no escaping in a structured-field
/// string.
pub(crate) struct PolicyItems {
    value: HeaderValue,
    names: Vec<(Duration, Box<str>)>,
}

impl PolicyItems {
    pub(crate) fn new(policy: &str, limits: &[Limit]) -> Self {
        let names: Vec<_> = limits
            .iter()
            .map(|limit| {
                let window = limit.rate().window();
                let name = match limits.len() {
                    1 => policy.to_owned(),
                    _ => format!("{policy}-{}s", window.as_secs()),
                };
                (window, name.into_boxed_str())
            })
            .collect();
        let value = limits
            .iter()
            .zip(&names)
            .map(|(limit, (window, name))| {
                format!(
                    "\"{name}\";q={};w={}",
                    limit.rate().limit(),
                    window.as_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let value =
            HeaderValue::try_from(value).expect("policy names are validated to be header-safe");
        Self { value, names }
    }

    fn name(&self, window: Duration) -> &str {
        self.names
            .iter()
            .find(|(w, _)| *w == window)
            .map_or("", |(_, name)| name)
    }
}

/// Adds the fields for `decision` to a response. Fields are appended, so
/// several policies on one route each report their own item.
pub(crate) fn insert(headers: &mut HeaderMap, policy: &Compiled, decision: &Decision) {
    let reset = whole_seconds(decision.reset_after);
    // Name (at most 64 + 10 bytes) and two u64s fit; no allocation to format.
    const LEN: usize = 160;
    let mut buf = [0u8; LEN];
    let mut cursor = &mut buf[..];
    let item = policy.items.name(decision.window);
    let _ = write!(cursor, "\"{item}\";r={};t={reset}", decision.remaining);
    let written = LEN - cursor.len();
    headers.append(RATELIMIT_POLICY, policy.items.value.clone());
    if let Ok(value) = HeaderValue::from_bytes(&buf[..written]) {
        headers.append(RATELIMIT, value);
    }
    if let Some(retry_after) = decision.retry_after {
        headers.insert(RETRY_AFTER, whole_seconds(retry_after).into());
    }
    if policy.legacy_headers {
        headers.insert(X_RATELIMIT_LIMIT, decision.limit.into());
        headers.insert(X_RATELIMIT_REMAINING, decision.remaining.into());
        headers.insert(X_RATELIMIT_RESET, reset.into());
    }
}
