//! What the layer tells handlers and clients: [`RateLimitInfo`],
//! [`RateLimitStatus`] and the default error responses.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::{StatusCode, header, request::Parts};

use crate::{Decision, algorithm::whole_seconds};

/// One policy's decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The policy's name.
    pub policy: Arc<str>,
    /// What the store decided.
    pub decision: Decision,
}

impl RateLimitInfo {
    /// `Retry-After` in whole seconds (rounded up, at least 1) for a denied
    /// request.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.decision.retry_after.map(whole_seconds)
    }
}

/// The decisions of the policies in [`Mode::Annotate`](crate::Mode::Annotate)
/// that a request passed through, as an extractor for handlers.
///
/// ```
/// use axum_redis_ratelimit::RateLimitStatus;
///
/// async fn handler(status: RateLimitStatus) -> &'static str {
///     if status.exceeded() { "over the limit: degraded answer" } else { "full answer" }
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(handler));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitStatus {
    decisions: Vec<RateLimitInfo>,
}

impl RateLimitStatus {
    /// The decision of the policy called `policy`, if it ran.
    pub fn get(&self, policy: &str) -> Option<&RateLimitInfo> {
        self.decisions.iter().find(|info| &*info.policy == policy)
    }

    /// Whether any policy found the request over its limit.
    pub fn exceeded(&self) -> bool {
        self.decisions.iter().any(|info| !info.decision.allowed)
    }

    /// All decisions, outermost layer first.
    pub fn iter(&self) -> impl Iterator<Item = &RateLimitInfo> {
        self.decisions.iter()
    }

    pub(crate) fn record(extensions: &mut http::Extensions, info: RateLimitInfo) {
        match extensions.get_mut::<Self>() {
            Some(status) => status.decisions.push(info),
            None => {
                extensions.insert(Self {
                    decisions: vec![info],
                });
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RateLimitStatus {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `429 {"error":"Too many requests","retry_after":N}`; the layer adds the
/// headers.
pub(crate) fn too_many_requests(info: &RateLimitInfo) -> Response {
    let retry_after = info.retry_after_secs().unwrap_or(1);
    json(
        StatusCode::TOO_MANY_REQUESTS,
        format!(r#"{{"error":"Too many requests","retry_after":{retry_after}}}"#),
    )
}

/// `503` for a policy that fails closed while its store is unavailable.
pub(crate) fn store_unavailable() -> Response {
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"error":"Rate limiter unavailable","retry_after":1}"#.to_owned(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

/// `400` for a request whose cost cannot be read.
pub(crate) fn bad_cost(reason: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        format!(
            r#"{{"error":"Bad Request","detail":"{}"}}"#,
            json_escape(reason)
        ),
    )
}

/// The inside of a JSON string: `Cost::from_fn` messages are the
/// application's and may quote what the client sent.
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `413` for a request that costs more than a limit can ever admit: waiting
/// would not help, so there is no `Retry-After`.
pub(crate) fn cost_exceeds_capacity(cost: u64, capacity: u64) -> Response {
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            r#"{{"error":"Request cost exceeds the rate limit","cost":{cost},"capacity":{capacity}}}"#
        ),
    )
}

/// The configured status for a request without a key. `label` is a key
/// label, validated to need no JSON escaping.
pub(crate) fn missing_key(status: StatusCode, label: &str) -> Response {
    let error = status.canonical_reason().unwrap_or("Rejected");
    json(
        status,
        format!(r#"{{"error":"{error}","missing_key":"{label}"}}"#),
    )
}

/// `400` for a request that sends a key header more than once. `label` is a
/// key label, validated to need no JSON escaping.
pub(crate) fn repeated_key(label: &str) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        format!(r#"{{"error":"Bad Request","repeated_key":"{label}"}}"#),
    )
}
