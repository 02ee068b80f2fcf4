//! `POST /api/v1/telemetry/`: a batch the limiter let through is checked
//! against what it was charged, then handed to the queue.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    AppState, MAX_TELEMETRY_BYTES,
    batch::{BatchCost, count_events},
    queue::{BATCH_ID_HEADER, BatchMark, Enqueued, batch_id},
};

pub fn json_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// Runs only once the limiter has let the request through, so the body of a
/// refused request is never read. The limiter charged what the head
/// declares; only a batch that holds exactly that many events goes on.
pub async fn telemetry_handler(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Refused before a byte of it is read: a client that waits for
    // `100 Continue` never sends it.
    let length = (request.headers().get(header::CONTENT_LENGTH))
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length > MAX_TELEMETRY_BYTES as u64) {
        return batch_too_large();
    }
    // Reading the body consumes `request`: keep its headers.
    let headers = request.headers().clone();
    let declared = match state.batch_cost.of(&headers) {
        Ok(declared) => declared,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    let batch_id = match batch_id(&headers) {
        Ok(id) => id,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    // Bytes reads at most MAX_TELEMETRY_BYTES (the route's DefaultBodyLimit).
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return batch_too_large();
        }
        Err(rejection) => return json_error(rejection.status(), "cannot read the body"),
    };
    let events = match count_events(&body) {
        Ok(events) => events,
        Err(detail) => return bad_batch(json!({ "error": "bad batch", "detail": detail })),
    };
    if events != declared {
        let detail = match &state.batch_cost {
            _ if events == 0 => "an empty batch: a batch holds at least one event".to_owned(),
            BatchCost::Header(name) => {
                format!("{name} says {declared} (no {name}: 1) but the batch holds {events}")
            }
            BatchCost::Fixed(_) => format!(
                "every batch is charged {declared} and must hold as many events; this one \
                 holds {events}"
            ),
        };
        return bad_batch(json!({
            "error": "bad batch",
            "detail": detail,
            "events": events,
            "declared": declared,
        }));
    }

    // Without a queue nothing is queued, and the answer must not say so.
    let Some(queue) = &state.queue else {
        return (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response();
    };
    let mark = BatchMark::new(
        &headers,
        batch_id.as_ref().map(HeaderValue::as_bytes),
        &body,
    );
    match queue.enqueue(&mark, &body, events).await {
        // A retry of a batch already queued is told what its first attempt
        // may never have heard.
        Ok(Enqueued::Queued | Enqueued::AlreadyQueued) => {
            (StatusCode::ACCEPTED, Json(json!({ "status": "queued" }))).into_response()
        }
        Ok(Enqueued::IdReused) => {
            let detail = format!(
                "{BATCH_ID_HEADER} names another batch of this agent's, queued within the \
                 last {} s",
                queue.window.as_secs()
            );
            let error = json!({ "error": "batch id reused", "detail": detail });
            (StatusCode::CONFLICT, Json(error)).into_response()
        }
        // The push may still run once Redis answers: the agent's retry, with
        // the same id or bytes, is then acknowledged without a second one.
        Err(err) => {
            tracing::error!(%err, bytes = body.len(), "telemetry not queued");
            let error = json!({ "error": "queue unavailable", "retry_after": 1 });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
            let retry_after = HeaderValue::from_static("1");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
            response
        }
    }
}

/// `413`: the batch is refused, and not queued.
pub fn batch_too_large() -> Response {
    let error = json!({ "error": "batch too large", "max_bytes": MAX_TELEMETRY_BYTES });
    (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response()
}

/// `400`: the batch is refused, and not queued.
pub fn bad_batch(body: serde_json::Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}
