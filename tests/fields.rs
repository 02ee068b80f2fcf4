//! What the `RateLimit`, `RateLimit-Policy` and `Retry-After` fields say,
//! read with an RFC 9651 parser (`sfv`) rather than string matching, and
//! held against what the limiter then does.

mod common;

use std::collections::BTreeMap;

use axum::{Router, routing::post};
use axum_redis_ratelimit::{Algorithm, Limit, Mode, Policy, Rate, RateLimitLayer, RateLimitStatus};
use common::{EVENT_COUNT, HttpClient, Reply, TOKEN, batches, nz, redis, serve};
use http::StatusCode;
use sfv::{BareItem, List, ListEntry, Parser};

/// One list member of a `RateLimit` or `RateLimit-Policy` field: its name
/// and its integer parameters.
type Member = (String, BTreeMap<String, i64>);

fn members(reply: &Reply, field: &str) -> Vec<Member> {
    let value = reply
        .header(field)
        .unwrap_or_else(|| panic!("no {field}: {reply:?}"));
    let list: List = Parser::new(value)
        .parse()
        .unwrap_or_else(|e| panic!("{field}: {value:?} is not a structured list: {e}"));
    list.iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("{field}: inner list in {value:?}");
            };
            let BareItem::String(name) = &item.bare_item else {
                panic!("{field}: item name is not a string in {value:?}");
            };
            let params = item
                .params
                .iter()
                .map(|(key, value)| match value {
                    BareItem::Integer(n) => (key.as_str().to_owned(), i64::from(*n)),
                    other => panic!("{field}: {key:?} is {other:?} in {value:?}"),
                })
                .collect();
            (name.as_str().to_owned(), params)
        })
        .collect()
}

/// The single member of `field`, and one of its parameters.
fn param(reply: &Reply, field: &str, key: &str) -> i64 {
    let members = members(reply, field);
    assert_eq!(members.len(), 1, "{members:?}");
    members[0].1[key]
}

fn retry_after(reply: &Reply) -> i64 {
    reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
        .parse()
        .unwrap()
}

/// `POST /t` behind `policy` on Redis, answering whether the request was
/// over the limit (what annotate mode forwards).
async fn reporting_client(policy: Policy) -> HttpClient {
    let app = Router::new()
        .route(
            "/t",
            post(
                |status: RateLimitStatus| async move { format!("exceeded={}", status.exceeded()) },
            ),
        )
        .layer(RateLimitLayer::new(policy, redis().await).unwrap());
    HttpClient::new(&serve(app).await)
}

/// On a 429, `t` is when the quota the request needs is back: the same as
/// `Retry-After`, not the time to a full refill; from the store and from
/// the block cache alike.
#[tokio::test]
async fn on_a_denial_t_is_retry_after_never_later() {
    let cases = [
        ("fixed 5/2s", batches(Algorithm::FixedWindow, "5/2s")),
        ("sliding 5/2s", batches(Algorithm::SlidingWindow, "5/2s")),
        ("gcra 5/m", batches(Algorithm::Gcra, "5/m")),
        (
            "gcra 5/s burst 10",
            batches(Algorithm::Gcra, "5/s").burst(nz(10)),
        ),
    ];
    for (name, policy) in cases {
        for cached in [false, true] {
            let policy = if cached {
                policy.clone().block_cache(100)
            } else {
                policy.clone()
            };
            let http = reporting_client(policy).await;
            let mut denials = 0;
            for _ in 0..12 {
                let reply = http.post("/t", &[(TOKEN, b"a")]).await;
                let t = param(&reply, "ratelimit", "t");
                assert!(t >= 1, "{name}: {reply:?}");
                if reply.status == StatusCode::TOO_MANY_REQUESTS {
                    denials += 1;
                    assert_eq!(param(&reply, "ratelimit", "r"), 0, "{name}");
                    assert_eq!(t, retry_after(&reply), "{name} (cache: {cached})");
                } else {
                    assert!(reply.header("retry-after").is_none(), "{name}: {reply:?}");
                }
            }
            assert!(denials >= 2, "{name}: only {denials} denials");
        }
    }
}

/// A GCRA burst larger than the rate's limit is what is really admitted at
/// once: `RateLimit-Policy` says so, and `r` never exceeds `q`.
#[tokio::test]
async fn remaining_never_exceeds_the_stated_quota() {
    let burst = batches(Algorithm::Gcra, "5/s")
        .burst(nz(10))
        .legacy_headers(true);
    let http = reporting_client(burst).await;
    let first = http.post("/t", &[(TOKEN, b"a")]).await;
    let policy = members(&first, "ratelimit-policy");
    assert_eq!(
        policy,
        [(
            "telemetry".to_owned(),
            BTreeMap::from([("q".into(), 10), ("w".into(), 2)])
        )]
    );
    assert_eq!(first.header("x-ratelimit-limit"), Some("10"));
    let mut admitted = 1;
    for _ in 0..12 {
        let reply = http.post("/t", &[(TOKEN, b"a")]).await;
        let r = param(&reply, "ratelimit", "r");
        assert!((0..=10).contains(&r), "r={r} above q=10");
        admitted += u32::from(reply.status == StatusCode::OK);
    }
    // The burst is admitted at once, as q says.
    assert!((10..=11).contains(&admitted), "{admitted}");

    // Several limits, bursts smaller and larger than their rates.
    // The first limit's burst is the policy's, the second has its own.
    let mixed = batches(Algorithm::Gcra, "10/s")
        .burst(nz(3))
        .limit(Limit::new(Rate::per_minute(60)).with_burst(nz(120)));
    let reply = reporting_client(mixed)
        .await
        .post("/t", &[(TOKEN, b"a")])
        .await;
    let quotas: Vec<_> = members(&reply, "ratelimit-policy")
        .into_iter()
        .map(|(name, p)| (name, p["q"], p["w"]))
        .collect();
    assert_eq!(
        quotas,
        [
            ("telemetry-1s".to_owned(), 10, 1),
            ("telemetry-60s".to_owned(), 120, 120)
        ]
    );
}

/// Annotate mode forwards every request, a too-costly one included, and a
/// forwarded response never carries `Retry-After`, denied or not.
#[tokio::test]
async fn annotate_mode_forwards_everything_and_never_adds_retry_after() {
    let policy = batches(Algorithm::FixedWindow, "10/m").mode(Mode::Annotate);
    let http = reporting_client(policy).await;
    let batch = |n: &'static str| {
        let http = http.clone();
        async move {
            http.post("/t", &[(TOKEN, b"a"), (EVENT_COUNT, n.as_bytes())])
                .await
        }
    };
    for (cost, exceeded) in [("4", false), ("11", true), ("6", false), ("1", true)] {
        let reply = batch(cost).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, format!("exceeded={exceeded}").as_str()),
            "cost {cost}"
        );
        assert!(
            reply.header("retry-after").is_none(),
            "cost {cost}: {reply:?}"
        );
        assert!(reply.header("ratelimit").is_some());
    }
}
