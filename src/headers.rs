//! Rate-limit fields on responses: `RateLimit-Policy` and `RateLimit` from
//! draft-ietf-httpapi-ratelimit-headers, `Retry-After`, and optionally the
//! legacy `X-RateLimit-*` trio.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header::RETRY_AFTER};

use crate::{
    Decision,
    algorithm::{Limit, whole_seconds},
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

/// A policy's `RateLimit-Policy` value and the item name and quota of each
/// limit, computed once. A policy with one limit is one item named after
/// it; with several, each is named `<policy>-<window>s`, e.g.
/// `"telemetry-1s";q=10;w=1, "telemetry-60s";q=1000;w=60`. Policy names are
/// letters, digits and `-_.`, so they need no escaping in a structured-field
/// string.
pub(crate) struct PolicyHeader {
    value: HeaderValue,
    items: Vec<Item>,
}

struct Item {
    /// The limit's rate window, which identifies it in a [`Decision`].
    window: Duration,
    name: Box<str>,
    quota: u64,
}

impl PolicyHeader {
    pub(crate) fn new(policy: &str, limits: &[Limit]) -> Self {
        let mut value = String::new();
        let items = limits
            .iter()
            .map(|limit| {
                let window = limit.rate().window();
                let name = match limits.len() {
                    1 => policy.to_owned(),
                    _ => format!("{policy}-{}s", window.as_secs()),
                };
                let (quota, quota_window) = limit.quota();
                if !value.is_empty() {
                    value.push_str(", ");
                }
                value.push_str(&format!("\"{name}\";q={quota};w={quota_window}"));
                Item {
                    window,
                    name: name.into_boxed_str(),
                    quota,
                }
            })
            .collect();
        let value =
            HeaderValue::try_from(value).expect("policy names are validated to be header-safe");
        Self { value, items }
    }

    fn item(&self, window: Duration) -> Option<&Item> {
        self.items.iter().find(|item| item.window == window)
    }
}

/// Adds the `RateLimit` fields for `decision` to a response. Fields are
/// appended, so several policies on one route each report their own item.
///
/// `t` is when the quota the request needs is back: on a denial the same
/// instant as `Retry-After`, never later; on an allowed request, when the
/// reported limit is fully available again (the window's end for the fixed
/// window, when the counted windows have passed for the sliding window,
/// when the bucket is full for GCRA).
pub(crate) fn insert(
    headers: &mut HeaderMap,
    items: &PolicyHeader,
    legacy: bool,
    decision: &Decision,
) {
    let t = whole_seconds(decision.retry_after.unwrap_or(decision.reset_after));
    let item = items.item(decision.window);
    headers.append(RATELIMIT_POLICY, items.value.clone());
    let name = item.map_or("", |item| &item.name);
    if let Ok(value) = HeaderValue::try_from(remaining_item(name, decision.remaining, t)) {
        headers.append(RATELIMIT, value);
    }
    // One trio per response, for the policy with the fewest remaining; on a
    // tie, the one set first (the inner layer, which may have refused it).
    let fewer = |existing: &HeaderValue| {
        let existing = existing.to_str().ok().and_then(|v| v.parse::<u64>().ok());
        existing.is_none_or(|existing| decision.remaining < existing)
    };
    if legacy && headers.get(X_RATELIMIT_REMAINING).is_none_or(fewer) {
        let quota = item.map_or(decision.limit, |item| item.quota);
        headers.insert(X_RATELIMIT_LIMIT, quota.into());
        headers.insert(X_RATELIMIT_REMAINING, decision.remaining.into());
        headers.insert(X_RATELIMIT_RESET, t.into());
    }
}

/// The `RateLimit` item `"<name>";r=<remaining>;t=<t>`, in a buffer that
/// becomes the header value as it is (one allocation, no copy).
fn remaining_item(name: &str, remaining: u64, t: u64) -> Vec<u8> {
    let (mut remaining_digits, mut t_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 6] = [
        b"\"",
        name.as_bytes(),
        b"\";r=",
        remaining_digits.format(remaining).as_bytes(),
        b";t=",
        t_digits.format(t).as_bytes(),
    ];
    parts.concat()
}

/// `Retry-After` for a response that refuses the request; successes never
/// carry one.
pub(crate) fn insert_retry_after(headers: &mut HeaderMap, decision: &Decision) {
    if let Some(retry_after) = decision.retry_after {
        headers.insert(RETRY_AFTER, whole_seconds(retry_after).into());
    }
}
