//! The client's IP address, trusting forwarding headers only from proxies the
//! operator named.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderName, request::Parts};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Hops walked through a forwarding header at most. A real chain has a few;
/// a client that sends thousands of entries must not make us walk them all.
const MAX_HOPS: usize = 32;

/// Which forwarding header a trusted proxy sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => http::header::FORWARDED,
        }
    }
}

/// How to find the client's address.
///
/// By default the socket peer is the client and every forwarding header is
/// ignored, since any client can send one. When the peer is one of the
/// `trusted_proxies`, the configured header is walked from the right (the end
/// the proxies append to) and the first address that is not a trusted proxy
/// is the client. IPv4-mapped IPv6 addresses count as IPv4; IPv6 clients can
/// be grouped by prefix, since one host commonly holds a whole /64.
///
/// ```
/// use axum_redis_ratelimit::ClientIp;
///
/// let ip = ClientIp::new()
///     .trust_proxies(["10.0.0.0/8", "fd00::/8"])
///     .ipv6_prefix(64);
/// assert!(ip.check().is_ok());
/// assert!(ClientIp::new().trust_proxies(["10.0.0.0/33"]).check().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIp {
    trusted_proxies: Vec<IpNet>,
    header: ForwardedHeader,
    ipv6_prefix: Option<u8>,
    /// The first setting that was wrong, as (field, reason): reported by
    /// [`check`](Self::check), and so by `RateLimitLayer::new`.
    invalid: Option<(&'static str, String)>,
}

impl ClientIp {
    /// The socket peer, no proxies trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust forwarding headers from peers in these CIDRs (a bare address
    /// means just that host).
    /// An entry that is not a CIDR or an address is reported by
    /// [`check`](Self::check), and so when the layer is built.
    pub fn trust_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for cidr in cidrs {
            let cidr = cidr.as_ref().trim();
            match parse_net(cidr) {
                Some(net) => self.trusted_proxies.push(net),
                None => self.invalid(
                    "trusted_proxies",
                    format!("{cidr:?} is not a CIDR such as 10.0.0.0/8 or an IP address"),
                ),
            }
        }
        self
    }

    /// The header trusted proxies set (default `X-Forwarded-For`). Only this
    /// one is read: consulting two would let a client pick the one it forged.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Count all IPv6 clients in one `/prefix` network as one client. A
    /// length outside 1 to 128 is reported by [`check`](Self::check).
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        if (1..=128).contains(&prefix) {
            self.ipv6_prefix = (prefix < 128).then_some(prefix);
        } else {
            self.invalid(
                "ipv6_prefix",
                format!("{prefix} is not a prefix length from 1 to 128"),
            );
        }
        self
    }

    fn invalid(&mut self, field: &'static str, reason: String) {
        self.invalid.get_or_insert((field, reason));
    }

    /// The first setting that was wrong, if any, for applications that
    /// check their configuration early; `RateLimitLayer::new` reports it
    /// too, as `policies.<name>.key.<field>`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `trusted_proxies` or `ipv6_prefix`.
    pub fn check(&self) -> Result<(), Error> {
        match &self.invalid {
            Some((field, reason)) => Err(Error::config(*field, reason.clone())),
            None => Ok(()),
        }
    }

    /// The client address for a request whose socket peer is `peer`, or
    /// `None` without a peer (the server was not started with
    /// `into_make_service_with_connect_info`).
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(self.resolve(peer, &parts.headers))
    }

    /// Walks the forwarding header from the right. Where the chain breaks (an
    /// entry that is not an address, `unknown`, an obfuscated node, non-ASCII
    /// bytes, too many hops), the last address reached is the client: it is a
    /// trusted proxy, which is as far as anything can be believed.
    ///
    /// A client's junk must only break its own entry, never the entries a
    /// proxy appended to its right (nginx appends to the client's line): so
    /// bytes that are not UTF-8 spoil just the entry they are in, and a line
    /// whose quotes do not balance is split on every comma.
    fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let mut hops = 0;
        for value in headers.get_all(self.header.name()).iter().rev() {
            let value = String::from_utf8_lossy(value.as_bytes());
            let nodes: Box<dyn Iterator<Item = Option<IpAddr>>> = match self.header {
                ForwardedHeader::XForwardedFor => Box::new(value.rsplit(',').map(parse_node)),
                ForwardedHeader::Forwarded => {
                    let elements: Vec<&str> = if quotes_balance(&value) {
                        split_unquoted(&value, ',').collect()
                    } else {
                        value.split(',').collect()
                    };
                    Box::new(elements.into_iter().rev().map(forwarded_for))
                }
            };
            for node in nodes {
                hops += 1;
                let Some(ip) = node.filter(|_| hops <= MAX_HOPS) else {
                    return client;
                };
                client = ip.to_canonical();
                if !self.is_trusted(client) {
                    return client;
                }
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The address as it is counted: IPv6 masked to the configured prefix.
    pub(crate) fn grouped(&self, ip: IpAddr) -> (IpAddr, Option<u8>) {
        match (ip, self.ipv6_prefix) {
            (IpAddr::V6(v6), Some(prefix)) => {
                let mask = u128::MAX << (128 - u32::from(prefix));
                let masked = Ipv6Addr::from(u128::from(v6) & mask);
                (IpAddr::V6(masked), Some(prefix))
            }
            _ => (ip, None),
        }
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:80`.
/// A network as configuration writes it: a CIDR, or a bare address for
/// just that host (IPv4-mapped IPv6 as IPv4, as clients are counted).
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| IpNet::from(ip.to_canonical()))
    })
}

fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || after.starts_with(':'))
            .then(|| ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
            .flatten();
    }
    node.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// The `for=` node of one RFC 7239 element, e.g. `for="[2001:db8::1]:80";proto=https`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    split_unquoted(element, ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

/// Follows RFC 7239 quoted strings through a value, character by character.
#[derive(Default)]
struct Quotes {
    inside: bool,
    escaped: bool,
}

impl Quotes {
    /// Feeds `c`; whether it stands outside any quoted string (a quote
    /// itself does not).
    fn outside(&mut self, c: char) -> bool {
        if self.escaped {
            self.escaped = false;
        } else if self.inside && c == '\\' {
            self.escaped = true;
        } else if c == '"' {
            self.inside = !self.inside;
        } else {
            return !self.inside;
        }
        false
    }
}

/// Whether every quoted string is closed (escaped quotes aside).
fn quotes_balance(text: &str) -> bool {
    let mut quotes = Quotes::default();
    text.chars().for_each(|c| {
        quotes.outside(c);
    });
    !quotes.inside
}

/// Splits on `sep` outside double-quoted strings (RFC 7239 values may quote a
/// separator).
fn split_unquoted(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quotes = Quotes::default();
    text.split(move |c: char| quotes.outside(c) && c == sep)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn behind_proxy() -> ClientIp {
        ClientIp::new().trust_proxies(["10.0.0.0/8", "fd00::/8"])
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let map = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(ClientIp::new().resolve(ip("8.8.8.8"), &map), ip("8.8.8.8"));
        assert_eq!(behind_proxy().resolve(ip("8.8.8.8"), &map), ip("8.8.8.8"));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let cfg = behind_proxy();
        let map = headers("x-forwarded-for", &["6.6.6.6, 2.2.2.2", "10.0.0.7"]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("2.2.2.2"));
        let map = headers("x-forwarded-for", &["[2001:db8::1]:443, 10.1.1.1:80"]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("2001:db8::1"));
    }

    #[test]
    fn a_broken_chain_stops_at_the_last_trusted_hop() {
        let cfg = behind_proxy();
        for value in ["garbage, 10.0.0.9", "unknown, 10.0.0.9", ", 10.0.0.9"] {
            let map = headers("x-forwarded-for", &[value]);
            assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("10.0.0.9"), "{value}");
        }
        assert_eq!(
            cfg.resolve(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn thousands_of_hops_are_cut_short() {
        let cfg = behind_proxy();
        let chain = vec!["10.0.0.5"; 5000].join(",");
        let map = headers("x-forwarded-for", &[&format!("1.2.3.4,{chain}")]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("10.0.0.5"));
    }

    #[test]
    fn rfc_7239_forwarded_is_parsed() {
        let cfg = behind_proxy().header(ForwardedHeader::Forwarded);
        let map = headers(
            "forwarded",
            &[r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For="10.2.2.2";by=_x"#],
        );
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("2001:db8:cafe::17"));
        for value in [
            "for=unknown",
            "for=_hidden",
            "proto=http",
            r#"for="1.1.1.1,x""#,
        ] {
            let map = headers("forwarded", &[value]);
            assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("10.0.0.1"), "{value}");
        }
        // The header not configured is ignored.
        let map = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("10.0.0.1"));
    }

    #[test]
    fn junk_from_the_client_breaks_only_its_own_entry() {
        let cfg = behind_proxy();
        let mut map = HeaderMap::new();
        map.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff, 203.0.113.7").unwrap(),
        );
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("203.0.113.7"));
        let cfg = cfg.header(ForwardedHeader::Forwarded);
        let map = headers("forwarded", &[r#"for=", for=203.0.113.7"#]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("203.0.113.7"));
        let map = headers("forwarded", &[r#"for="a,b", for=203.0.113.8"#]);
        assert_eq!(cfg.resolve(ip("10.0.0.1"), &map), ip("203.0.113.8"));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let cfg = behind_proxy();
        assert_eq!(
            cfg.resolve(
                ip("::ffff:10.0.0.1"),
                &headers("x-forwarded-for", &["::ffff:1.2.3.4"])
            ),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let cfg = ClientIp::new().ipv6_prefix(64);
        assert_eq!(
            cfg.grouped(ip("2001:db8:1:2:3:4:5:6")),
            (ip("2001:db8:1:2::"), Some(64))
        );
        assert_eq!(cfg.grouped(ip("1.2.3.4")), (ip("1.2.3.4"), None));
        let err = ClientIp::new().ipv6_prefix(0).check().unwrap_err();
        assert!(err.to_string().contains("ipv6_prefix"), "{err}");
        // The first wrong setting is the one reported; the good entries count.
        let bad = ClientIp::new().trust_proxies(["10.0.0.0/8", "10.0.0.0/33", "x"]);
        let err = bad.check().unwrap_err();
        assert!(err.to_string().contains("\"10.0.0.0/33\""), "{err}");
        assert_eq!(bad.trusted_proxies.len(), 1);
    }
}
