//! What the layer tells handlers and clients: [`RateLimitInfo`],
//! [`RateLimitStatus`], and [`Rejection`] with its default responses.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Json,
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::{StatusCode, request::Parts};
use serde::Serialize;

use crate::{Decision, algorithm::whole_seconds};

/// One policy's decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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

/// Why the layer answered a request itself instead of forwarding it, handed
/// to [`Policy::on_rejected`](crate::Policy::on_rejected) so that one hook
/// can shape every refusal. The layer adds the `RateLimit` fields and
/// `Retry-After` to whatever the hook returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Over the limit: `429 Too Many Requests`.
    TooManyRequests(RateLimitInfo),
    /// The key was not found and the policy rejects such requests
    /// ([`OnMissingKey::Reject`](crate::OnMissingKey::Reject)).
    MissingKey {
        /// The policy's name.
        policy: Arc<str>,
        /// The label of the first key tried, e.g. `x-agent-token`.
        label: Arc<str>,
        /// The status the policy answers with.
        status: StatusCode,
    },
    /// A key header was sent more than once: `400`.
    RepeatedKey {
        /// The policy's name.
        policy: Arc<str>,
        /// The header's label, e.g. `x-agent-token`.
        label: Arc<str>,
    },
    /// The request's cost could not be read: `400`.
    BadCost {
        /// The policy's name.
        policy: Arc<str>,
        /// Why, as the cost's source says it.
        reason: String,
    },
    /// The request costs more than a limit can ever admit: `413`, and no
    /// `Retry-After`, since waiting would not help.
    CostTooLarge {
        /// The policy's name.
        policy: Arc<str>,
        /// The request's cost.
        cost: u64,
        /// The most one request can be allowed.
        capacity: u64,
    },
    /// The store is unavailable and the policy fails closed: `503`.
    StoreUnavailable {
        /// The policy's name.
        policy: Arc<str>,
    },
}

impl Rejection {
    /// The name of the policy that refused the request.
    pub fn policy(&self) -> &str {
        match self {
            Self::TooManyRequests(info) => &info.policy,
            Self::MissingKey { policy, .. }
            | Self::RepeatedKey { policy, .. }
            | Self::BadCost { policy, .. }
            | Self::CostTooLarge { policy, .. }
            | Self::StoreUnavailable { policy } => policy,
        }
    }

    /// The status of the default response.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MissingKey { status, .. } => *status,
            Self::RepeatedKey { .. } | Self::BadCost { .. } => StatusCode::BAD_REQUEST,
            Self::CostTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response the layer gives without a hook: the status and a small
    /// JSON body, e.g. `{"error":"Too many requests","retry_after":17}`.
    pub fn default_response(&self) -> Response {
        let status = self.status();
        let mut body = Body {
            error: status.canonical_reason().unwrap_or("Rejected"),
            ..Body::default()
        };
        match self {
            Self::TooManyRequests(info) => {
                body.error = "Too many requests";
                body.retry_after = Some(info.retry_after_secs().unwrap_or(1));
            }
            Self::MissingKey { label, .. } => body.missing_key = Some(label),
            Self::RepeatedKey { label, .. } => body.repeated_key = Some(label),
            Self::BadCost { reason, .. } => body.detail = Some(reason),
            Self::CostTooLarge { cost, capacity, .. } => {
                body.error = "Request cost exceeds the rate limit";
                (body.cost, body.capacity) = (Some(*cost), Some(*capacity));
            }
            Self::StoreUnavailable { .. } => {
                body.error = "Rate limiter unavailable";
                body.retry_after = Some(STORE_RETRY_AFTER_SECS);
            }
        }
        (status, Json(body)).into_response()
    }
}

/// What a client is told to wait when the store is unavailable.
pub(crate) const STORE_RETRY_AFTER_SECS: u64 = 1;

/// The default JSON bodies; absent fields are left out, and the fields keep
/// this order.
#[derive(Default, Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeated_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}
