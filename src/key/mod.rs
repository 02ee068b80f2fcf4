//! Which client a request counts against: [`Key`].
//!
//! A key extractor reads the request head and writes a label and a value,
//! such as `x-agent-token:AGENT-1` or `ip:203.0.113.9`, which become the hash
//! tag of the Redis key. Values come from clients, so they pass through
//! an encoding before they reach a key.

mod buffer;
mod client_ip;
pub(crate) mod encode;
pub(crate) mod layout;

use std::{fmt, net::IpAddr, sync::Arc};

use http::{HeaderName, request::Parts};

pub(crate) use buffer::KeyBuffer;
pub(crate) use client_ip::parse_net;
pub use client_ip::{ClientIp, ForwardedHeader};

use crate::Error;

/// The authenticated user, as the application's auth middleware records it
/// in the request extensions; read by [`Key::user`].
///
/// ```
/// use axum_redis_ratelimit::UserId;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(UserId::from("user-5"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub Arc<str>);

impl<T: Into<Arc<str>>> From<T> for UserId {
    fn from(id: T) -> Self {
        Self(id.into())
    }
}

/// A custom key's reader: gives the request's value, if any, to its
/// second argument (once) and says whether it found one.
type ReadFn = dyn Fn(&Parts, &mut dyn FnMut(&[u8])) -> bool + Send + Sync;

#[derive(Clone)]
enum Source {
    Header(HeaderName),
    ClientIp(Arc<ClientIp>),
    Global,
    Custom(Arc<ReadFn>),
    /// A key whose definition was wrong; reported when the policy is built.
    Invalid(Arc<Error>),
}

/// How to find the client a request counts against.
///
/// ```
/// use axum_redis_ratelimit::{ClientIp, Key};
///
/// // Agents by token; the token is a credential, so only its hash is stored.
/// let agents = Key::header("X-Agent-Token").secret();
/// // People by address, behind a load balancer at 10.0.0.0/8.
/// let people = Key::client_ip_with(ClientIp::new().trust_proxies(["10.0.0.0/8"]));
/// // Users as the auth middleware recorded them, else their address.
/// let users = Key::user().or(Key::client_ip());
/// // Anything else.
/// let tenants = Key::from_fn("tenant", |parts| parts.uri.host().map(str::to_owned));
/// ```
#[derive(Clone)]
pub struct Key {
    label: Arc<str>,
    source: Source,
    secret: bool,
    fallback: Option<Box<Key>>,
}

/// Why a request has no key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// No value: the header was absent or empty, the extension not set…
    /// Carries the label of the first key tried, e.g. `x-agent-token`.
    Missing(Arc<str>),
    /// A key header sent more than once. Applications read one of the
    /// values (usually the first) and the layer cannot know which, so the
    /// request is refused rather than keyed by a value the client chose.
    Repeated(Arc<str>),
}

impl Key {
    fn new(label: impl Into<Arc<str>>, source: Source) -> Self {
        Self {
            label: label.into(),
            source,
            secret: false,
            fallback: None,
        }
    }

    fn invalid(label: &str, field: &str, reason: String) -> Self {
        Self::new(
            label,
            Source::Invalid(Arc::new(Error::config(field, reason))),
        )
    }

    /// The value of a request header, such as `X-Agent-Token`. An absent or
    /// empty header is a missing key; a header sent more than once is
    /// answered `400 Bad Request` whatever [`OnMissingKey`](crate::OnMissingKey)
    /// says, since the application may read another value than the layer.
    pub fn header(name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            // The name is the label in Redis, so it must be a valid label.
            Ok(header) if encode::is_valid_name(header.as_str()) => {
                Self::new(header.as_str().to_owned(), Source::Header(header))
            }
            _ => Self::invalid(
                "header",
                "key.header",
                format!(
                    "{name:?} is not a header name of letters, digits, '-', '_' and '.' \
                     (use Key::from_fn for others)"
                ),
            ),
        }
    }

    /// The client's socket address; forwarding headers are ignored. Needs
    /// the server to be started with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn client_ip() -> Self {
        Self::client_ip_with(ClientIp::new())
    }

    /// The client's address as `config` finds it (trusted proxies, IPv6
    /// grouping).
    pub fn client_ip_with(config: ClientIp) -> Self {
        match config.check() {
            Err(Error::Config { field, reason, .. }) => {
                Self::invalid("ip", &format!("key.{field}"), reason)
            }
            _ => Self::new("ip", Source::ClientIp(Arc::new(config))),
        }
    }

    /// The [`UserId`] the application put in the request extensions.
    pub fn user() -> Self {
        Self::custom("user", |parts, found| {
            match parts.extensions.get::<UserId>() {
                Some(UserId(id)) if !id.is_empty() => {
                    found(id.as_bytes());
                    true
                }
                _ => false,
            }
        })
    }

    /// A value derived from an extension of type `T`, set by an earlier
    /// middleware; missing when the extension is absent.
    pub fn extension<T, V, F>(label: &str, read: F) -> Self
    where
        T: Send + Sync + 'static,
        V: AsRef<[u8]>,
        F: Fn(&T) -> V + Send + Sync + 'static,
    {
        Self::from_fn(label, move |parts| parts.extensions.get::<T>().map(&read))
    }

    /// Any value computed from the request head; `None` is a missing key.
    /// `label` names the key in Redis and may hold letters, digits, `-`,
    /// `_` and `.`.
    pub fn from_fn<V, F>(label: &str, read: F) -> Self
    where
        V: AsRef<[u8]>,
        F: Fn(&Parts) -> Option<V> + Send + Sync + 'static,
    {
        if !encode::is_valid_name(label) {
            return Self::invalid(
                "custom",
                "key.label",
                format!("{label:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        Self::custom(label, move |parts, found| match read(parts) {
            Some(value) if !value.as_ref().is_empty() => {
                found(value.as_ref());
                true
            }
            _ => false,
        })
    }

    fn custom(
        label: &str,
        read: impl Fn(&Parts, &mut dyn FnMut(&[u8])) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::new(label, Source::Custom(Arc::new(read)))
    }

    /// One counter shared by every request.
    pub fn global() -> Self {
        Self::new("global", Source::Global)
    }

    /// Stores and logs only a hash of the value: for credentials such as
    /// agent tokens or API keys.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Tries `fallback` when this key has no value.
    pub fn or(mut self, fallback: Key) -> Self {
        let mut last = &mut self;
        while let Some(ref mut next) = last.fallback {
            last = next;
        }
        last.fallback = Some(Box::new(fallback));
        self
    }

    /// The label of the key, e.g. `x-agent-token`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Reports a key that was defined wrongly.
    /// Reports a key that was defined wrongly, or a fallback chain in which
    /// two keys share a label: a header called `user` would otherwise write
    /// the same key as [`Key::user`], and a client could spend a user's limit.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let mut labels = Vec::new();
        let mut key = Some(self);
        while let Some(current) = key {
            if let Source::Invalid(err) = &current.source {
                return Err(match &**err {
                    Error::Config { field, reason, .. } => {
                        Error::config(field.clone(), reason.clone())
                    }
                    other => Error::config("key", other.to_string()),
                });
            }
            if labels.contains(&&*current.label) {
                return Err(Error::config(
                    "key",
                    format!("two keys of one chain are labelled {:?}", current.label),
                ));
            }
            labels.push(&*current.label);
            key = current.fallback.as_deref();
        }
        Ok(())
    }

    /// Appends `label:value` (or `global`) for this request to `out`, trying
    /// the fallbacks in order.
    pub(crate) fn write(&self, parts: &Parts, out: &mut String) -> Result<(), KeyError> {
        let start = out.len();
        let mut key = Some(self);
        while let Some(current) = key {
            match current.write_one(parts, out) {
                Found::Yes => return Ok(()),
                Found::Repeated => {
                    out.truncate(start);
                    return Err(KeyError::Repeated(current.label.clone()));
                }
                Found::No => out.truncate(start),
            }
            key = current.fallback.as_deref();
        }
        Err(KeyError::Missing(self.label.clone()))
    }

    fn write_one(&self, parts: &Parts, out: &mut String) -> Found {
        out.push_str(&self.label);
        if matches!(self.source, Source::Global) {
            return Found::Yes;
        }
        out.push(':');
        let found = match &self.source {
            Source::Header(name) => {
                let mut values = parts.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (Some(value), None) if !value.is_empty() => {
                        self.push_raw(Raw::Bytes(value.as_bytes()), out);
                        true
                    }
                    (Some(_), Some(_)) => return Found::Repeated,
                    _ => false,
                }
            }
            Source::ClientIp(config) => match config.client_ip(parts) {
                Some(ip) => {
                    self.push_raw(Raw::Ip(ip), out);
                    true
                }
                None => {
                    warn_no_connect_info();
                    false
                }
            },
            Source::Custom(read) => read(parts, &mut |value| self.push_raw(Raw::Bytes(value), out)),
            Source::Global | Source::Invalid(_) => false,
        };
        if found { Found::Yes } else { Found::No }
    }

    /// Appends the value part of this key (what follows `label:`) for a
    /// client whose value is `raw`: the one place that encodes a value,
    /// for a request ([`write`](Self::write)) and for an operator
    /// ([`write_value`](Self::write_value)) alike.
    fn push_raw(&self, raw: Raw<'_>, out: &mut String) {
        let start = out.len();
        match raw {
            // A header is hashed from its raw bytes, without a copy.
            Raw::Bytes(value) if matches!(self.source, Source::Header(_)) => {
                return encode::push_value(out, value, self.secret);
            }
            Raw::Bytes(value) => encode::push_value(out, value, false),
            Raw::Ip(ip) => {
                use fmt::Write as _;
                let ip = ip.to_canonical();
                let (ip, prefix) = match &self.source {
                    Source::ClientIp(config) => config.grouped(ip),
                    _ => (ip, None),
                };
                let _ = write!(out, "{ip}");
                if let Some(prefix) = prefix {
                    let _ = write!(out, "/{prefix}");
                }
            }
        }
        if self.secret {
            // Whatever the source wrote, only its hash is kept.
            let value = out.split_off(start);
            encode::push_value(out, value.as_bytes(), true);
        }
    }

    /// The keys of this chain: this one, then its fallbacks in order.
    pub(crate) fn chain(&self) -> impl Iterator<Item = &Key> {
        std::iter::successors(Some(self), |key| key.fallback.as_deref())
    }

    /// Appends `label:value` (or `global`) for a client whose value for
    /// this key, not its fallbacks, is `value`: what [`write`](Self::write)
    /// appends for a request carrying that value. A `client_ip` key takes an
    /// address (grouped by its IPv6 prefix); a `global` key, no value.
    pub(crate) fn write_value(&self, value: &[u8], out: &mut String) -> Result<(), Error> {
        let fail = |reason: String| Err(Error::config("value", reason));
        let raw = match (&self.source, value.is_empty()) {
            (Source::Invalid(_), _) => return self.validate(),
            (Source::Global, true) => {
                out.push_str(&self.label);
                return Ok(());
            }
            (Source::Global, false) => {
                return fail(
                    "the global key counts every request as one client: give no value".into(),
                );
            }
            (_, true) => {
                return fail(format!(
                    "is empty, which the {} key treats as missing",
                    self.label
                ));
            }
            (Source::ClientIp(_), false) => {
                let text = String::from_utf8_lossy(value);
                match text.trim().parse() {
                    Ok(ip) => Raw::Ip(ip),
                    Err(_) => {
                        return fail(format!(
                            "{text:?} is not an IP address, as the ip key needs"
                        ));
                    }
                }
            }
            (_, false) => Raw::Bytes(value),
        };
        out.push_str(&self.label);
        out.push(':');
        self.push_raw(raw, out);
        Ok(())
    }
}

/// A client's value before it is encoded into a key.
enum Raw<'a> {
    /// A header's or a custom key's bytes.
    Bytes(&'a [u8]),
    /// The client's address, before grouping.
    Ip(IpAddr),
}

/// What one key of a chain found in a request.
enum Found {
    Yes,
    No,
    Repeated,
}

fn warn_no_connect_info() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::error!(
            "rate limit keyed by client IP, but the request has no ConnectInfo<SocketAddr>: \
             serve the app with `into_make_service_with_connect_info::<SocketAddr>()`"
        );
    });
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Key");
        s.field("label", &self.label).field("secret", &self.secret);
        if let Source::ClientIp(config) = &self.source {
            s.field("client_ip", config);
        }
        s.field("fallback", &self.fallback).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;

    use super::*;

    fn parts(build: impl FnOnce(&mut http::Request<()>)) -> Parts {
        let mut request = http::Request::new(());
        build(&mut request);
        request.into_parts().0
    }

    fn write(key: &Key, parts: &Parts) -> Result<String, KeyError> {
        let mut out = String::new();
        key.write(parts, &mut out).map(|()| out)
    }

    #[test]
    fn header_keys_carry_their_label() {
        let key = Key::header("X-Agent-Token");
        let req = parts(|r| {
            r.headers_mut()
                .insert("x-agent-token", "AGENT-1".parse().unwrap());
        });
        assert_eq!(write(&key, &req).unwrap(), "x-agent-token:AGENT-1");
        let secret = write(&key.clone().secret(), &req).unwrap();
        assert!(secret.starts_with("x-agent-token:#") && !secret.contains("AGENT"));
    }

    #[test]
    fn missing_and_empty_headers_are_missing_keys() {
        let key = Key::header("x-agent-token");
        let empty = parts(|r| {
            r.headers_mut().insert("x-agent-token", "".parse().unwrap());
        });
        for req in [parts(|_| {}), empty] {
            assert_eq!(
                write(&key, &req).unwrap_err(),
                KeyError::Missing("x-agent-token".into())
            );
        }
    }

    #[test]
    fn a_repeated_key_header_is_refused_not_keyed_by_either_value() {
        let key = Key::header("x-agent-token").or(Key::global());
        let two = parts(|r| {
            r.headers_mut()
                .append("x-agent-token", "a".parse().unwrap());
            r.headers_mut()
                .append("x-agent-token", "b".parse().unwrap());
        });
        assert_eq!(
            write(&key, &two).unwrap_err(),
            KeyError::Repeated("x-agent-token".into())
        );
    }

    #[test]
    fn secret_hides_every_kind_of_value() {
        let req = parts(|r| {
            r.extensions_mut().insert(ConnectInfo(
                "203.0.113.9:5000".parse::<SocketAddr>().unwrap(),
            ));
            r.extensions_mut().insert(UserId::from("u5"));
        });
        for key in [
            Key::client_ip(),
            Key::user(),
            Key::from_fn("t", |_| Some("abc")),
        ] {
            let label = key.label().to_owned();
            let written = write(&key.secret(), &req).unwrap();
            assert!(written.starts_with(&format!("{label}:#")), "{written}");
            assert!(
                !written.contains("203.0.113.9") && !written.contains("u5"),
                "{written}"
            );
        }
    }

    #[test]
    fn fallbacks_are_tried_in_order() {
        let key = Key::user().or(Key::header("x-a")).or(Key::client_ip());
        let req = parts(|r| {
            r.extensions_mut()
                .insert(ConnectInfo("192.0.2.1:5000".parse::<SocketAddr>().unwrap()));
        });
        assert_eq!(write(&key, &req).unwrap(), "ip:192.0.2.1");
        let req = parts(|r| {
            r.extensions_mut().insert(UserId::from("u5"));
        });
        assert_eq!(write(&key, &req).unwrap(), "user:u5");
        assert_eq!(
            write(&key, &parts(|_| {})).unwrap_err(),
            KeyError::Missing("user".into())
        );
    }

    #[test]
    fn global_and_custom_keys() {
        assert_eq!(write(&Key::global(), &parts(|_| {})).unwrap(), "global");
        let key = Key::from_fn("path", |p: &Parts| Some(p.uri.path().to_owned()));
        let req = parts(|r| *r.uri_mut() = "/a/b{c}".parse().unwrap());
        let written = write(&key, &req).unwrap();
        assert!(written.starts_with("path:#"), "{written}");
    }

    /// What the layer writes for `parts` must be what an operator's raw
    /// value gives: one encoding, hashing included.
    fn same_as_the_layer(key: &Key, parts: &Parts, value: &[u8]) -> String {
        let from_request = write(key, parts).unwrap();
        let mut from_value = String::new();
        key.write_value(value, &mut from_value).unwrap();
        assert_eq!(from_value, from_request, "{key:?} {value:?}");
        from_value
    }

    /// Values that stay verbatim and values that must be hashed: spaces,
    /// braces, a glob, `#`, more than 64 bytes, bytes that are not UTF-8.
    const VALUES: [&[u8]; 8] = [
        b"AGENT-1",
        b"with space",
        b"{tag}",
        b"B}",
        b"a*",
        b"#0123",
        &[b'x'; 65],
        b"\xff\xfe bin",
    ];

    #[test]
    fn a_raw_header_value_gives_the_layers_key_secret_or_not() {
        for value in VALUES {
            let req = parts(|r| {
                r.headers_mut().insert(
                    "x-agent-token",
                    http::HeaderValue::from_bytes(value).unwrap(),
                );
            });
            let plain = Key::header("X-Agent-Token");
            let written = same_as_the_layer(&plain, &req, value);
            assert_eq!(written.starts_with("x-agent-token:#"), value != b"AGENT-1");
            let secret = same_as_the_layer(&plain.secret(), &req, value);
            assert!(secret.starts_with("x-agent-token:#"), "{secret}");
        }
    }

    #[test]
    fn a_raw_user_or_custom_value_gives_the_layers_key_secret_or_not() {
        for value in VALUES.iter().filter_map(|v| std::str::from_utf8(v).ok()) {
            let req = parts(|r| {
                r.extensions_mut().insert(UserId::from(value));
                r.headers_mut()
                    .insert("x-tenant", http::HeaderValue::from_str(value).unwrap());
            });
            let tenant = || {
                Key::from_fn("tenant", |p: &Parts| {
                    p.headers.get("x-tenant").map(|v| v.as_bytes().to_vec())
                })
            };
            for key in [
                Key::user(),
                Key::user().secret(),
                tenant(),
                tenant().secret(),
            ] {
                same_as_the_layer(&key, &req, value.as_bytes());
            }
        }
    }

    #[test]
    fn a_raw_address_is_grouped_as_the_layer_groups_it() {
        let grouped = || Key::client_ip_with(ClientIp::new().ipv6_prefix(64));
        for (peer, value, expected) in [
            (
                "[2001:db8:1:2:3:4:5:6]:5000",
                "2001:db8:1:2:3:4:5:6",
                "ip:2001:db8:1:2::/64",
            ),
            ("203.0.113.9:5000", "203.0.113.9", "ip:203.0.113.9"),
            (
                "[::ffff:203.0.113.9]:5000",
                "::ffff:203.0.113.9",
                "ip:203.0.113.9",
            ),
        ] {
            let req = parts(|r| {
                r.extensions_mut()
                    .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            });
            assert_eq!(
                same_as_the_layer(&grouped(), &req, value.as_bytes()),
                expected
            );
            let secret = same_as_the_layer(&grouped().secret(), &req, value.as_bytes());
            assert!(secret.starts_with("ip:#"), "{secret}");
            same_as_the_layer(&Key::client_ip(), &req, value.as_bytes());
        }
    }

    /// Counters already in Redis keep their names: the hashes as the layer
    /// has always written them (a secret custom key hashes the value's
    /// verbatim-or-hashed form).
    #[test]
    fn secret_values_hash_as_they_always_have() {
        let mut out = String::new();
        let mut written = |key: Key, value: &[u8]| {
            out.clear();
            key.write_value(value, &mut out).unwrap();
            out.clone()
        };
        assert_eq!(
            written(Key::header("x-agent-token").secret(), b"AGENT-1"),
            "x-agent-token:#88281f1323ee000cd52e217e692f1f4a"
        );
        assert_eq!(
            written(Key::user().secret(), b"u 5"),
            "user:#15594249daa7b988464222c8a1c3cc7e"
        );
        assert_eq!(
            written(Key::user().secret(), b"u5"),
            "user:#5850a03e801ffb108da1160e33739794"
        );
        let grouped = Key::client_ip_with(ClientIp::new().ipv6_prefix(64)).secret();
        assert_eq!(
            written(grouped, b"2001:db8:1:2:3:4:5:6"),
            "ip:#7437dddbc0275bcfe536fa291fb82060"
        );
    }

    #[test]
    fn raw_values_a_key_cannot_hold_are_refused_naming_the_value() {
        let mut out = String::new();
        let mut error = |key: Key, value: &[u8]| {
            let error = key.write_value(value, &mut out).unwrap_err();
            assert_eq!(error.config_path().as_deref(), Some("value"), "{error}");
            error.to_string()
        };
        assert!(error(Key::client_ip(), b"not-an-ip").contains("not an IP address"));
        assert!(error(Key::header("x-a"), b"").contains("empty"));
        assert!(error(Key::global(), b"x").contains("no value"));
        let mut global = String::new();
        Key::global().write_value(b"", &mut global).unwrap();
        assert_eq!(global, write(&Key::global(), &parts(|_| {})).unwrap());
    }

    #[test]
    fn bad_definitions_fail_validation_naming_the_field() {
        let err = Key::header("bad header").validate().unwrap_err();
        assert!(err.to_string().contains("key.header"), "{err}");
        let err = Key::from_fn("a{b}", |_| Some("x")).validate().unwrap_err();
        assert!(err.to_string().contains("key.label"), "{err}");
        let err = Key::global().or(Key::header("")).validate().unwrap_err();
        assert!(err.to_string().contains("key.header"), "{err}");
        let err = Key::header("x*").validate().unwrap_err();
        assert!(err.to_string().contains("key.header"), "{err}");
        let err = Key::user().or(Key::header("user")).validate().unwrap_err();
        assert!(err.to_string().contains("labelled \"user\""), "{err}");
    }
}
