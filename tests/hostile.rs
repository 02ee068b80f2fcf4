//! Hostile input (issue 4.3): what a client can put in the headers the layer
//! reads, and what comes of it.
//!
//! The first half runs the fuzz targets' properties (`fuzz/`) as proptest
//! cases in the normal test run: the rate parser, the key encoding, header
//! keys, forwarding headers and the cost header never panic, keys stay
//! bounded and inside their hash tag, and distinct client values never share
//! a key. The second half sends the hostile requests over real HTTP and
//! asserts the outcome each one is documented to have.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum_redis_ratelimit::{
    ClientIp, Cost, ForwardedHeader, Key, MemoryStore, OnMissingKey, Policy, Rate, RateLimitLayer,
    cost::MAX_COST,
    fuzzing::{client_ip, cost, encode_value, request_parts, storage_key},
};
use common::{
    HttpClient, Reply, TOKEN, app, client, keys_with_prefix, only_key, redis, serve, telemetry,
    unique_prefix, within,
};
use http::StatusCode;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `{x-agent-token:` + at most 64 verbatim bytes + `}`.
const MAX_TAG_LEN: usize = 1 + TOKEN.len() + 1 + 64 + 1;

// ---------------------------------------------------------------------------
// Properties of the parsers, as in the fuzz targets.
// ---------------------------------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes a header value may hold: tab, printable ASCII and obs-text.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => 0x20u8..0x7f,
        1 => 0x80u8..=0xff,
        1 => Just(b'\t'),
        1 => prop::sample::select(b"{}#*?[]:,;=\"\\ ".to_vec()),
    ];
    prop::collection::vec(byte, 0..max)
}

/// Values near the verbatim form: safe characters, around 64 bytes long.
fn almost_verbatim() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"aZ09-._~:@+/=#{".to_vec()), 0..70)
}

/// The properties of one encoded value (see `fuzz/fuzz_targets/key_encoding.rs`).
fn check_encoding(value: &[u8], secret: bool) -> String {
    let encoded = encode_value(value, secret);
    assert!(
        !encoded.is_empty() && encoded.len() <= 65,
        "{value:?} -> {encoded:?}"
    );
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}'),
        "{value:?} -> {encoded:?}"
    );
    if let Some(hex) = encoded.strip_prefix('#') {
        assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    } else {
        assert!(!secret, "a secret in clear: {encoded:?}");
        assert_eq!(encoded.as_bytes(), value, "verbatim means unchanged");
        assert!(!encoded.contains('#'));
    }
    encoded
}

/// The hash tag for these `X-Agent-Token` lines, checked for its shape;
/// `None` for a missing key.
fn check_header_key(key: &Key, values: &[Vec<u8>]) -> Option<String> {
    let headers: Vec<(&str, &[u8])> = values.iter().map(|v| (TOKEN, v.as_slice())).collect();
    let parts = request_parts(&headers).expect("valid header bytes");
    let tag = storage_key(key, &parts);
    match &tag {
        // Absent, empty, or repeated (refused, never keyed).
        None => assert!(
            values.len() != 1 || values == [b""],
            "{values:?} is missing"
        ),
        Some(tag) => {
            assert!(tag.len() <= MAX_TAG_LEN, "{tag:?}");
            assert!(tag.starts_with("{x-agent-token:") && tag.ends_with('}'));
            assert_eq!(tag.matches('{').count() + tag.matches('}').count(), 2);
        }
    }
    tag
}

/// Every address written anywhere in a forwarding header, in any form a
/// proxy writes one: a superset of what the parser may return.
fn addresses_in(values: &[String]) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for value in values {
        for token in value.split([',', ';', '=', '"', ' ', '\t']) {
            found.extend(token.parse::<IpAddr>().ok());
            found.extend(token.parse::<SocketAddr>().ok().map(|a| a.ip()));
            let bracketed = token.strip_prefix('[').and_then(|t| t.split_once(']'));
            found.extend(bracketed.and_then(|(ip, _)| ip.parse::<IpAddr>().ok()));
        }
    }
    found.iter().map(IpAddr::to_canonical).collect()
}

/// One hop as proxies (and forgers) write it.
fn node() -> impl Strategy<Value = String> {
    let trusted_v4 = any::<[u8; 3]>().prop_map(|[a, b, c]| format!("10.{a}.{b}.{c}"));
    let trusted_v6 = any::<u16>().prop_map(|n| format!("fd00::{n:x}"));
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        trusted_v4.clone(),
        trusted_v6.clone(),
        (trusted_v4, any::<u16>()).prop_map(|(ip, port)| format!("{ip}:{port}")),
        (trusted_v6, any::<u16>()).prop_map(|(ip, port)| format!("[{ip}]:{port}")),
        any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        any::<Ipv4Addr>().prop_map(|ip| format!("::ffff:{ip}")),
        Just("unknown".to_owned()),
        Just("_hidden".to_owned()),
        Just(String::new()),
        "[ -~]{0,12}",
    ]
}

/// A forwarding header line: hops joined by commas, `for=` pairs for
/// `Forwarded`, sometimes quoted, sometimes with other parameters.
fn forwarding_line(header: ForwardedHeader) -> impl Strategy<Value = String> {
    let element = (node(), any::<bool>(), any::<bool>(), "[ \t]{0,2}").prop_map(
        move |(node, quoted, proto, space)| match header {
            ForwardedHeader::XForwardedFor => format!("{space}{node}"),
            ForwardedHeader::Forwarded => {
                let value = if quoted { format!("\"{node}\"") } else { node };
                let proto = if proto { ";proto=https" } else { "" };
                format!("{space}for={value}{proto}")
            }
            other => unimplemented!("no forwarding line for {other:?}"),
        },
    );
    prop::collection::vec(element, 0..40).prop_map(|hops| hops.join(","))
}

/// The properties of `ClientIp` on these lines (see
/// `fuzz/fuzz_targets/forwarded.rs`).
fn check_client_ip(peer: IpAddr, header: ForwardedHeader, values: &[String]) {
    const TRUSTED: &[&str] = &["10.0.0.0/8", "fd00::/8"];
    let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let Some(client) = client_ip(peer, TRUSTED, header, &bytes) else {
        return;
    };
    let peer = peer.to_canonical();
    let trusted = TRUSTED
        .iter()
        .any(|net| net.parse::<ipnet::IpNet>().unwrap().contains(&peer));
    if !trusted {
        assert_eq!(client, peer, "an untrusted peer's headers are ignored");
    } else if client != peer {
        assert!(
            addresses_in(values).contains(&client),
            "{client} is neither the peer nor in {values:?}"
        );
    }
}

fn peer() -> impl Strategy<Value = IpAddr> {
    prop::sample::select(vec![
        "10.0.0.1".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        "::ffff:10.0.0.1".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
    ])
}

/// What a plain reading of `X-Event-Count` gives: one line of 1 to 10 ASCII
/// digits worth 1 to `MAX_COST`.
fn plain_cost(values: &[Vec<u8>]) -> Option<u64> {
    let [value] = values else { return None };
    let text = std::str::from_utf8(value).ok()?;
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_COST).contains(n))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_rate_parser_never_panics_and_round_trips(
        text in prop_oneof![
            ".{0,24}",
            "[ +0-9]{0,22}/[0-9]{0,8}[smhdxé]?[ ]?",
            "[1-9][0-9]{0,5}/([1-9][0-9]{0,2})?[smhd]",
        ]
    ) {
        match text.parse::<Rate>() {
            Ok(rate) => {
                prop_assert!(rate.limit() >= 1);
                prop_assert!((1..=366 * 86_400).contains(&rate.window().as_secs()));
                let printed = rate.to_string();
                prop_assert_eq!(printed.parse::<Rate>().unwrap(), rate);
                prop_assert_eq!(printed.parse::<Rate>().unwrap().to_string(), printed);
            }
            Err(err) => {
                let quoted = format!("{text:?}");
                prop_assert!(err.to_string().contains(&quoted), "{}", err);
            }
        }
    }

    #[test]
    fn key_encoding_is_bounded_injective_and_inside_the_tag(
        a in prop_oneof![header_bytes(100), almost_verbatim(), prop::collection::vec(any::<u8>(), 0..80)],
        b in prop_oneof![header_bytes(100), almost_verbatim(), prop::collection::vec(any::<u8>(), 0..80)],
        secret in any::<bool>(),
    ) {
        let (ea, eb) = (check_encoding(&a, secret), check_encoding(&b, secret));
        // The same value twice, and a value against its own encoding.
        prop_assert_eq!(&ea, &check_encoding(&a, secret));
        if a != b {
            prop_assert_ne!(&ea, &eb, "{:?} and {:?} share a key", a, b);
        }
        if ea.as_bytes() != a {
            prop_assert_ne!(&check_encoding(ea.as_bytes(), secret), &ea);
        }
    }

    #[test]
    fn header_keys_stay_in_one_hash_tag_and_never_collide(
        a in prop::collection::vec(prop_oneof![header_bytes(80), almost_verbatim()], 0..4),
        b in prop::collection::vec(prop_oneof![header_bytes(80), almost_verbatim()], 0..4),
        secret in any::<bool>(),
    ) {
        let key = if secret { Key::header(TOKEN).secret() } else { Key::header(TOKEN) };
        let (ka, kb) = (check_header_key(&key, &a), check_header_key(&key, &b));
        if a != b && ka.is_some() {
            prop_assert_ne!(ka, kb, "{:?} and {:?} share a key", a, b);
        }
    }

    #[test]
    fn forwarded_for_yields_the_peer_or_an_address_it_names(
        peer in peer(),
        values in prop::collection::vec(forwarding_line(ForwardedHeader::XForwardedFor), 0..3),
    ) {
        check_client_ip(peer, ForwardedHeader::XForwardedFor, &values);
    }

    #[test]
    fn rfc_7239_forwarded_yields_the_peer_or_an_address_it_names(
        peer in peer(),
        values in prop::collection::vec(forwarding_line(ForwardedHeader::Forwarded), 0..3),
    ) {
        check_client_ip(peer, ForwardedHeader::Forwarded, &values);
    }

    #[test]
    fn forwarding_headers_of_any_bytes_never_panic(
        peer in peer(),
        forwarded in any::<bool>(),
        values in prop::collection::vec(header_bytes(120), 0..3),
    ) {
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let lossy: Vec<String> = values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let bytes: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let client = client_ip(peer, &["10.0.0.0/8", "fd00::/8"], header, &bytes).unwrap();
        prop_assert!(client == peer.to_canonical() || addresses_in(&lossy).contains(&client));
    }

    #[test]
    fn the_cost_header_is_read_as_plain_digits_or_refused(
        values in prop::collection::vec(
            prop_oneof![
                header_bytes(14),
                "[0-9]{1,12}".prop_map(String::into_bytes),
                any::<u32>().prop_map(|n| n.to_string().into_bytes()),
            ],
            0..3,
        ),
    ) {
        let headers: Vec<(&str, &[u8])> = values.iter().map(|v| ("x-event-count", v.as_slice())).collect();
        let parts = request_parts(&headers).unwrap();
        let got = cost(&Cost::header("X-Event-Count"), &parts);
        match (values.is_empty(), plain_cost(&values), got) {
            (true, _, got) => prop_assert_eq!(got, Ok(1), "no header costs 1"),
            (false, Some(want), got) => prop_assert_eq!(got, Ok(want)),
            (false, None, Err(message)) => {
                // A fixed message: the client's bytes are never echoed.
                prop_assert_eq!(message, format!("x-event-count must be one whole number from 1 to {MAX_COST}"));
            }
            (false, None, Ok(n)) => prop_assert!(false, "{:?} read as {}", values, n),
        }
    }
}

// ---------------------------------------------------------------------------
// Over real HTTP.
// ---------------------------------------------------------------------------

/// A client of a `1/m` policy on Redis keyed by the client's address, read
/// from `header` when the peer is within `trusted`; and the policy's prefix.
async fn behind_proxies(trusted: &str, header: ForwardedHeader) -> (HttpClient, String) {
    let prefix = unique_prefix();
    let proxies = ClientIp::new().trust_proxies([trusted]).header(header);
    let policy = telemetry("1/m")
        .prefix(&prefix)
        .key(Key::client_ip_with(proxies));
    (client(policy, redis().await).await, prefix)
}

fn assert_status(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{reply:?}");
}

/// Sends `request` as raw bytes on a new connection and reads the whole
/// answer: for what hyper's client refuses to send.
async fn raw(base: &str, request: &[u8]) -> String {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    within(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_1_mib_header_is_refused_with_431_and_the_server_goes_on() {
    let http = client(telemetry("5/m"), MemoryStore::new()).await;
    let huge = vec![b'A'; 1 << 20];
    let reply = http.post("/t", &[(TOKEN, &huge)]).await;
    assert_status(&reply, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(
        reply.header("ratelimit").is_none(),
        "refused before the layer"
    );
    assert_status(&http.post("/t", &[(TOKEN, b"a")]).await, StatusCode::OK);
}

#[tokio::test]
async fn a_256_kib_token_is_hashed_into_a_bounded_key() {
    let prefix = unique_prefix();
    let http = client(telemetry("1/m").prefix(&prefix), redis().await).await;
    let big = vec![b'A'; 256 * 1024];
    assert_status(&http.post("/t", &[(TOKEN, &big)]).await, StatusCode::OK);
    assert_status(
        &http.post("/t", &[(TOKEN, &big)]).await,
        StatusCode::TOO_MANY_REQUESTS,
    );
    let key = only_key(&prefix).await;
    let hash = hex_sha256_128(&big);
    assert_eq!(
        key,
        format!("{prefix}telemetry:{{x-agent-token:#{hash}}}:60:fixed")
    );
}

/// 128 bits of SHA-256 in hex, as the key encoding writes a hashed value;
/// computed through the public encoding so the test does not restate it.
fn hex_sha256_128(value: &[u8]) -> String {
    encode_value(value, true)
        .strip_prefix('#')
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn more_header_lines_than_hyper_allows_are_refused_with_431() {
    let http = client(telemetry("5/m"), MemoryStore::new()).await;
    let lines: Vec<(&str, &[u8])> = (0..200)
        .map(|_| ("x-forwarded-for", &b"1.2.3.4"[..]))
        .collect();
    let reply = http.post("/t", &lines).await;
    assert_status(&reply, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_status(&http.post("/t", &[(TOKEN, b"a")]).await, StatusCode::OK);
}

#[tokio::test]
async fn five_thousand_forwarded_hops_from_a_trusted_peer_are_cut_short() {
    // All hops trusted: the walk stops after 32 of them, at a proxy.
    let (http, prefix) = behind_proxies("127.0.0.0/8", ForwardedHeader::XForwardedFor).await;
    let hops: Vec<String> = (0..5000)
        .map(|i| format!("127.0.{}.{}", i / 256, i % 256))
        .collect();
    let chain = format!("203.0.113.7, {}", hops.join(", "));
    assert!(chain.len() > 60_000);
    let first = http
        .post("/t", &[("x-forwarded-for", chain.as_bytes())])
        .await;
    assert_status(&first, StatusCode::OK);
    let second = http
        .post("/t", &[("x-forwarded-for", chain.as_bytes())])
        .await;
    assert_status(&second, StatusCode::TOO_MANY_REQUESTS);
    // Hop 32 from the right of 0..5000 is number 4968.
    let key = only_key(&prefix).await;
    assert_eq!(
        key,
        format!("{prefix}telemetry:{{ip:127.0.19.104}}:60:fixed")
    );
}

#[tokio::test]
async fn five_thousand_forwarded_hops_yield_the_rightmost_untrusted_one() {
    let (http, prefix) = behind_proxies("127.0.0.0/8", ForwardedHeader::XForwardedFor).await;
    let hops: Vec<String> = (0..5000)
        .map(|i| format!("198.51.{}.{}", i / 256, i % 256))
        .collect();
    let chain = hops.join(",");
    assert_status(
        &http
            .post("/t", &[("x-forwarded-for", chain.as_bytes())])
            .await,
        StatusCode::OK,
    );
    let key = only_key(&prefix).await;
    assert_eq!(
        key,
        format!("{prefix}telemetry:{{ip:198.51.19.135}}:60:fixed")
    );
}

#[tokio::test]
async fn five_thousand_forwarded_hops_from_an_untrusted_peer_are_ignored() {
    let (http, prefix) = behind_proxies("10.0.0.0/8", ForwardedHeader::XForwardedFor).await;
    for n in 0..2 {
        let hops: Vec<String> = (0..5000)
            .map(|i| format!("198.51.{n}.{}", i % 256))
            .collect();
        let chain = hops.join(",");
        let reply = http
            .post("/t", &[("x-forwarded-for", chain.as_bytes())])
            .await;
        let want = [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS][n];
        assert_status(&reply, want);
    }
    let key = only_key(&prefix).await;
    assert_eq!(key, format!("{prefix}telemetry:{{ip:127.0.0.1}}:60:fixed"));
}

#[tokio::test]
async fn obs_text_and_tabs_in_a_token_are_hashed_and_limited() {
    for value in [
        &b"agent-\x80\xff\xfe"[..],
        b"agent\tone",
        b"\xc3\xa9t\xc3\xa9",
    ] {
        let prefix = unique_prefix();
        let http = client(telemetry("2/m").prefix(&prefix), redis().await).await;
        for want in [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert_status(&http.post("/t", &[(TOKEN, value)]).await, want);
        }
        let key = only_key(&prefix).await;
        let hash = hex_sha256_128(value);
        assert_eq!(
            key,
            format!("{prefix}telemetry:{{x-agent-token:#{hash}}}:60:fixed"),
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_or_blank_token_is_a_missing_key() {
    let http = client(telemetry("5/m"), MemoryStore::new()).await;
    // hyper trims the spaces and tabs around a value, so a blank one is empty.
    for value in [&b""[..], b"   ", b"\t"] {
        let reply = http.post("/t", &[(TOKEN, value)]).await;
        assert_status(&reply, StatusCode::BAD_REQUEST);
        assert_eq!(
            reply.body,
            r#"{"error":"Bad Request","missing_key":"x-agent-token"}"#
        );
    }
}

#[tokio::test]
async fn a_second_token_line_is_refused_not_a_fresh_budget() {
    let prefix = unique_prefix();
    // Even where a missing token is let through, a repeated one is not.
    for on_missing_key in [OnMissingKey::default(), OnMissingKey::Allow] {
        let policy = telemetry("1/m")
            .prefix(&prefix)
            .on_missing_key(on_missing_key);
        let http = client(policy, redis().await).await;
        let _ = http.post("/t", &[(TOKEN, b"agent-7")]).await;
        assert_status(
            &http.post("/t", &[(TOKEN, b"agent-7")]).await,
            StatusCode::TOO_MANY_REQUESTS,
        );
        // The exhausted token first and a fresh one second, the mirror, and
        // fifty copies of one value.
        let fifty: Vec<(&str, &[u8])> = (0..50).map(|_| (TOKEN, &b"agent-7"[..])).collect();
        for (i, lines) in [
            vec![(TOKEN, &b"agent-7"[..]), (TOKEN, &b"nonce-1"[..])],
            vec![(TOKEN, &b"nonce-2"[..]), (TOKEN, &b"agent-7"[..])],
            fifty,
        ]
        .into_iter()
        .enumerate()
        {
            let reply = http.post("/t", &lines).await;
            assert_status(&reply, StatusCode::BAD_REQUEST);
            assert_eq!(
                reply.body, r#"{"error":"Bad Request","repeated_key":"x-agent-token"}"#,
                "case {i}"
            );
        }
    }
    // Refused requests write no counter.
    assert_eq!(keys_with_prefix(&prefix).await.len(), 1);
}

#[tokio::test]
async fn unknown_obfuscated_and_quoted_forwarded_nodes_have_defined_outcomes() {
    // The peer is 127.0.0.1, a trusted proxy; the Forwarded header is read.
    let cases: [(&str, &str); 9] = [
        // Not an address: the chain stops at the last trusted hop, the peer.
        ("for=unknown", "127.0.0.1"),
        ("for=_hidden", "127.0.0.1"),
        ("for=\"_hidden\";proto=https", "127.0.0.1"),
        // A quoted comma is part of the value, which is then no address.
        ("for=\"192.0.2.1, for=198.51.100.1\"", "127.0.0.1"),
        // Behind another trusted proxy: stops there.
        ("for=192.0.2.1, for=_hidden, for=127.0.0.9", "127.0.0.9"),
        (
            "for=192.0.2.1, for=unknown, for=\"127.0.0.9:8080\"",
            "127.0.0.9",
        ),
        // Addresses in the forms RFC 7239 allows.
        ("for=\"[::1]:80\"", "::1"),
        (
            "For=\"[2001:db8:cafe::17]:4711\";proto=https",
            "2001:db8:cafe::17",
        ),
        ("for=192.0.2.43, for=198.51.100.17;by=_x", "198.51.100.17"),
    ];
    for (value, ip) in cases {
        let (http, prefix) = behind_proxies("127.0.0.0/8", ForwardedHeader::Forwarded).await;
        let reply = http.post("/t", &[("forwarded", value.as_bytes())]).await;
        assert_status(&reply, StatusCode::OK);
        let key = only_key(&prefix).await;
        assert_eq!(
            key,
            format!("{prefix}telemetry:{{ip:{ip}}}:60:fixed"),
            "{value}"
        );
    }
}

#[tokio::test]
async fn control_characters_are_refused_by_the_http_parser() {
    let base = serve(app(telemetry("100/m"), MemoryStore::new())).await;
    // HeaderValue refuses these, so hyper's client cannot send them.
    for byte in [0x00u8, 0x01, 0x08, 0x0b, 0x0c, 0x1b, 0x7f, b'\r'] {
        assert!(http::HeaderValue::from_bytes(&[b'a', byte, b'b']).is_err());
        let mut request =
            b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Agent-Token: a".to_vec();
        request.extend([byte, b'b']);
        request.extend(b"\r\n\r\n");
        let answer = raw(&base, &request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{byte:#04x}: {answer:?}"
        );
    }
    // A bare LF ends the line: what follows is a header line of its own,
    // here one with no colon, which the parser refuses too.
    let answer = raw(
        &base,
        b"POST /t HTTP/1.1\r\nHost: x\r\nX-Agent-Token: a\nb\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    // The same request without the control character is served.
    let answer = raw(&base, b"POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\nX-Agent-Token: ab\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    let http = HttpClient::new(&base);
    assert_status(&http.post("/t", &[(TOKEN, b"a")]).await, StatusCode::OK);
}

#[tokio::test]
async fn over_long_and_binary_event_counts_are_400() {
    let policy = telemetry("100/m").cost(Cost::header("X-Event-Count"));
    let http = client(policy, MemoryStore::new()).await;
    let long = vec![b'9'; 64 * 1024];
    for value in [
        &b"12345678901"[..],
        b"00000000001",
        &long,
        b"\xff\xfe",
        b"\x80",
        b"1\t2",
        "\u{0663}".as_bytes(), // ARABIC-INDIC DIGIT THREE
        b"0x10",
        b"1e3",
    ] {
        let reply = http
            .post("/t", &[(TOKEN, b"a"), ("x-event-count", value)])
            .await;
        assert_status(&reply, StatusCode::BAD_REQUEST);
        assert_eq!(
            reply.body,
            format!(
                r#"{{"error":"Bad Request","detail":"x-event-count must be one whole number from 1 to {MAX_COST}"}}"#
            )
        );
    }
    // Two lines are refused even when each is a number.
    let reply = http
        .post(
            "/t",
            &[
                (TOKEN, b"a"),
                ("x-event-count", b"1"),
                ("x-event-count", b"1"),
            ],
        )
        .await;
    assert_status(&reply, StatusCode::BAD_REQUEST);
    // Ten digits with leading zeros are a number.
    let reply = http
        .post("/t", &[(TOKEN, b"a"), ("x-event-count", b"0000000002")])
        .await;
    assert_status(&reply, StatusCode::OK);
    assert!(
        reply.header("ratelimit").unwrap().contains(";r=98;"),
        "{reply:?}"
    );
}

// ---------------------------------------------------------------------------
// Bugs this suite found, each test holding its fix.
// ---------------------------------------------------------------------------

/// nginx's `$proxy_add_x_forwarded_for` (and most proxies) append the
/// client's address to the line the client sent. One byte that is not ASCII
/// on that line, or an unbalanced quote in `Forwarded`, once made the whole
/// line unreadable, so the walk stopped at the proxy: the client was counted
/// as the proxy, a second bucket next to its own.
#[tokio::test]
async fn a_client_cannot_trade_its_address_for_its_proxys() {
    for (header, honest, hostile) in [
        (
            ForwardedHeader::XForwardedFor,
            &b"203.0.113.7"[..],
            &b"\xff, 203.0.113.7"[..],
        ),
        (
            ForwardedHeader::Forwarded,
            b"for=203.0.113.7",
            b"for=\", for=203.0.113.7",
        ),
    ] {
        let (http, _) = behind_proxies("127.0.0.0/8", header).await;
        let name = match header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            other => unimplemented!("no header name for {other:?}"),
        };
        assert_status(&http.post("/t", &[(name, honest)]).await, StatusCode::OK);
        let reply = http.post("/t", &[(name, hostile)]).await;
        assert_status(&reply, StatusCode::TOO_MANY_REQUESTS);
    }
}

/// A header named like another source's label (`user`, `ip`) writes the
/// same key, so in `Key::user().or(Key::header("user"))` an anonymous
/// `User: alice` request would spend the authenticated alice's limit. Such a
/// chain is refused when the layer is built.
#[test]
fn a_header_never_writes_another_sources_key() {
    let chain = Key::user().or(Key::header("user"));
    let anonymous = request_parts(&[("user", b"alice")]).unwrap();
    let mut alice = request_parts(&[]).unwrap();
    alice
        .extensions
        .insert(axum_redis_ratelimit::UserId::from("alice"));
    assert_eq!(storage_key(&chain, &anonymous), storage_key(&chain, &alice));
    let policy = Policy::new("p").rate(Rate::per_minute(1)).key(chain);
    let error = RateLimitLayer::new(policy, MemoryStore::new())
        .err()
        .unwrap();
    assert!(error.to_string().contains("labelled \"user\""), "{error}");
}

/// The `400` for a cost that cannot be read is JSON built by hand; it once
/// left control characters unescaped, so a `Cost::from_fn` message that
/// quoted a header with a tab made invalid JSON.
#[tokio::test]
async fn a_cost_error_is_always_valid_json() {
    let policy = telemetry("5/m").cost(Cost::from_fn(|parts| {
        let value = parts
            .headers
            .get("x-n")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        Err(format!("bad count {}", String::from_utf8_lossy(value)))
    }));
    let http = client(policy, MemoryStore::new()).await;
    let reply = http.post("/t", &[(TOKEN, b"a"), ("x-n", b"1\t2")]).await;
    assert_status(&reply, StatusCode::BAD_REQUEST);
    let json: Result<serde_json::Value, _> = serde_json::from_str(&reply.body);
    assert!(json.is_ok(), "{:?}", reply.body);
}
