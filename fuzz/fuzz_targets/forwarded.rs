//! Arbitrary `X-Forwarded-For` / `Forwarded` lines from a peer, trusted or
//! not. The first byte picks the header and the peer; the rest is header
//! lines separated by `\n`. Never a panic; an untrusted peer is the client
//! whatever it sends; otherwise the client is the peer or an address that
//! appears in the input.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use axum_redis_ratelimit::{ForwardedHeader, fuzzing::client_ip};
use libfuzzer_sys::fuzz_target;

const TRUSTED: &[&str] = &["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"];
const PEERS: [&str; 4] = ["10.0.0.1", "fd00::1", "::ffff:10.0.0.1", "192.0.2.1"];

/// Every address written anywhere in the input, in any form a proxy might
/// write it: a superset of what the parser may return.
fn addresses(values: &[&[u8]]) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for value in values {
        let text = String::from_utf8_lossy(value);
        for token in text.split([',', ';', '=', '"', ' ', '\t']) {
            let inside = token
                .strip_prefix('[')
                .and_then(|t| t.split_once(']'))
                .map(|(ip, _)| ip);
            found.extend(token.parse::<IpAddr>().ok());
            found.extend(token.parse::<SocketAddr>().ok().map(|a| a.ip()));
            found.extend(inside.and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
    }
    found.iter().map(IpAddr::to_canonical).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let header = if selector & 1 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let peer: IpAddr = PEERS[usize::from(selector >> 1) % PEERS.len()]
        .parse()
        .unwrap();
    let values: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let Some(client) = client_ip(peer, TRUSTED, header, &values) else {
        return;
    };
    let peer = peer.to_canonical();
    if peer == "192.0.2.1".parse::<IpAddr>().unwrap() {
        assert_eq!(client, peer, "an untrusted peer's headers are ignored");
    } else if client != peer {
        assert!(
            addresses(&values).contains(&client),
            "{client} is neither the peer nor in {values:?}"
        );
    }
});
