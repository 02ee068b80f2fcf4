//! Entry points for the fuzz targets in `fuzz/` and the property tests in
//! `tests/hostile.rs`: the parsers that see untrusted input, reachable
//! without a server. Not part of the API: each function only calls the
//! crate-private code the layer runs on every request.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{HeaderName, HeaderValue, Request, request::Parts};

use crate::{
    ClientIp, Cost, ForwardedHeader, Key,
    key::{encode, layout},
};

/// The head of a request carrying `headers`, in order (a repeated name is a
/// repeated header), as hyper hands it to the layer; `None` when a name or a
/// value could never reach the layer (`HeaderValue::from_bytes` rejects
/// control characters other than tab, and DEL).
pub fn request_parts(headers: &[(&str, &[u8])]) -> Option<Parts> {
    let mut request = Request::new(());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request.into_parts().0)
}

/// A client value as it appears in a storage key: verbatim when short and
/// made of safe characters, else `#` and 128 bits of its SHA-256 (always so
/// when `secret`).
pub fn encode_value(value: &[u8], secret: bool) -> String {
    let mut out = String::new();
    encode::push_value(&mut out, value, secret);
    out
}

/// The client address [`ClientIp`] finds for a request from `peer` whose
/// forwarding `header` holds `values` (one header line each), when the
/// proxies in `trusted` are trusted. `None` when a value could never reach
/// the layer (see [`request_parts`]).
///
/// Entries of `trusted` that are not CIDRs or addresses are left out.
pub fn client_ip(
    peer: IpAddr,
    trusted: &[&str],
    header: ForwardedHeader,
    values: &[&[u8]],
) -> Option<IpAddr> {
    let config = ClientIp::new().trust_proxies(trusted).header(header);
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let headers: Vec<(&str, &[u8])> = values.iter().map(|value| (name, *value)).collect();
    let mut parts = request_parts(&headers)?;
    parts
        .extensions
        .insert(ConnectInfo(SocketAddr::new(peer, 0)));
    config.client_ip(&parts)
}

/// The hash tag of the storage key `key` gives this request, braces
/// included: `{x-agent-token:AGENT-1}`. The layer writes exactly this
/// between the policy's `<prefix><name>:` and the window suffix. `None` is
/// a missing or a repeated key (both refused).
pub fn storage_key(key: &Key, parts: &Parts) -> Option<String> {
    let mut out = String::new();
    layout::client_key("{", key, parts, &mut out).ok()?;
    Some(out)
}

/// What `cost` makes of this request: its cost, or the message of the `400`
/// the layer answers.
pub fn cost(cost: &Cost, parts: &Parts) -> Result<u64, String> {
    cost.of(parts)
}
