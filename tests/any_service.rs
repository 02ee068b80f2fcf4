//! The layer over tower services that are not axum's: a plain
//! `service_fn` over `http` types with hyper's `Full` body, and a
//! tonic-style service whose own body ends with trailers (`grpc-status`).
//! Both get the `429`, `Retry-After` and the `RateLimit` fields, and what
//! they answer themselves passes through whole, trailers included.

mod common;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use axum_redis_ratelimit::{Key, MemoryStore, Policy, RateLimitLayer};
use bytes::Bytes;
use common::RedisServer;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

fn policy() -> Policy {
    Policy::new("grpc")
        .rate("2/m".parse().unwrap())
        .key(Key::header("x-agent-token"))
        .prefix(common::unique_prefix())
}

fn request<B>(body: B) -> Request<B> {
    Request::post("/edr.Telemetry/Send")
        .header("x-agent-token", "agent-1")
        .body(body)
        .unwrap()
}

/// Sends three requests through `service`: two allowed, the third refused.
async fn third_is_refused<S, B, R>(service: S, body: impl Fn() -> B) -> [Response<R>; 3]
where
    S: Service<Request<B>, Response = Response<R>, Error = Infallible> + Clone,
{
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(service.clone().oneshot(request(body())).await.unwrap());
    }
    answers.try_into().ok().unwrap()
}

fn assert_refused(allowed: &Response<impl Sized>, refused: &Response<impl Sized>) {
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["ratelimit"], "\"grpc\";r=0;t=60");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "60");
    assert_eq!(refused.headers()["ratelimit-policy"], "\"grpc\";q=2;w=60");
}

#[tokio::test]
async fn a_plain_service_fn_over_http_types_is_limited() {
    let inner = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"accepted"))))
    });
    let layer = RateLimitLayer::new(policy(), MemoryStore::new()).unwrap();
    let [_, allowed, refused] = third_is_refused(layer.layer(inner), Full::default).await;
    assert_refused(&allowed, &refused);
    let body = allowed.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "accepted");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["retry_after"], 60);
}

/// A body of tonic's shape: one data frame, then trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl GrpcBody {
    fn new(data: &'static [u8]) -> Self {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self {
            data: Some(Bytes::from_static(data)),
            trailers: Some(trailers),
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }
}

#[tokio::test]
async fn a_tonic_style_service_keeps_its_body_and_trailers() {
    let inner = tower::service_fn(|request: Request<GrpcBody>| async move {
        let received = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(received, "event", "the request body reaches the service");
        Ok::<_, Infallible>(Response::new(GrpcBody::new(b"ack")))
    });
    let store = axum_redis_ratelimit::RedisStore::connect(RedisServer::shared().url())
        .await
        .unwrap();
    let layer = RateLimitLayer::new(policy(), store).unwrap();
    let body = || GrpcBody::new(b"event");
    let [_, allowed, refused] = third_is_refused(layer.layer(inner), body).await;
    assert_refused(&allowed, &refused);
    let collected = allowed.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "ack");
}
