//! Rate-limit fields on responses: `RateLimit-Policy` and `RateLimit` from
//! draft-ietf-httpapi-ratelimit-headers, `Retry-After`, and optionally the
//! legacy `X-RateLimit-*` trio.

use std::io::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue, header::RETRY_AFTER};

use crate::{Decision, Rate, algorithm::whole_seconds, policy::Compiled};

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

/// Computed once per policy. Policy names are letters, digits and `-_.`, so
/// they need no escaping inside a structured-field string.
pub(crate) fn policy_value(name: &str, rate: Rate) -> HeaderValue {
    let text = format!(
        "\"{name}\";q={};w={}",
        rate.limit(),
        rate.window().as_secs()
    );
    HeaderValue::try_from(text).expect("policy names are validated to be header-safe")
}

/// Adds the fields for `decision` to a response. Fields are appended, so
/// several policies on one route each report their own item.
pub(crate) fn insert(headers: &mut HeaderMap, policy: &Compiled, decision: &Decision) {
    let reset = whole_seconds(decision.reset_after);
    let mut buf = [0u8; 128];
    let mut cursor = &mut buf[..];
    let _ = write!(
        cursor,
        "\"{}\";r={};t={reset}",
        policy.name, decision.remaining
    );
    let written = 128 - cursor.len();
    headers.append(RATELIMIT_POLICY, policy.policy_header.clone());
    if let Ok(value) = HeaderValue::from_bytes(&buf[..written]) {
        headers.append(RATELIMIT, value);
    }
    if let Some(retry_after) = decision.retry_after() {
        headers.insert(RETRY_AFTER, whole_seconds(retry_after).into());
    }
    if policy.legacy_headers {
        headers.insert(X_RATELIMIT_LIMIT, decision.limit.into());
        headers.insert(X_RATELIMIT_REMAINING, decision.remaining.into());
        headers.insert(X_RATELIMIT_RESET, reset.into());
    }
}
