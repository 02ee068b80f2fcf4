//! Requests a policy lets through without counting them: from listed
//! networks, carrying a listed header value, or as a predicate of the
//! application's says. Checked before the key, so an exempt request costs
//! no store call.

use std::sync::Arc;

use http::{HeaderName, request::Parts};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ClientIp, Error, config::ExemptConfig, key::parse_net};

/// The application's own exemption rule, given the request head.
pub type ExemptPredicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// A policy's exemptions, checked and ready for the hot path.
pub(crate) struct Exemptions {
    nets: Vec<IpNet>,
    client_ip: ClientIp,
    /// Each header with the SHA-256 of the values that exempt: comparing
    /// digests in constant time tells a client nothing of a value, not even
    /// its length.
    headers: Vec<(HeaderName, Vec<[u8; 32]>)>,
    predicate: Option<ExemptPredicate>,
}

impl std::fmt::Debug for Exemptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The digests of secret values are left out too.
        f.debug_struct("Exemptions")
            .field("nets", &self.nets)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("predicate", &self.predicate.is_some())
            .finish_non_exhaustive()
    }
}

impl Exemptions {
    /// The exemptions `config` and `predicate` describe, or `None` when
    /// there are none.
    ///
    /// # Errors
    /// [`Error::Config`] naming `exempt.ips`, `exempt.trusted_proxies` or
    /// `exempt.headers`.
    pub(crate) fn new(
        config: &ExemptConfig,
        predicate: Option<ExemptPredicate>,
    ) -> Result<Option<Self>, Error> {
        if config.is_empty() && predicate.is_none() {
            return Ok(None);
        }
        let nets = config
            .ips
            .iter()
            .map(|ip| {
                parse_net(ip).ok_or_else(|| {
                    Error::config(
                        "exempt.ips",
                        format!("{ip:?} is not a CIDR such as 10.0.0.0/8 or an IP address"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if let Some(bad) = config
            .trusted_proxies
            .iter()
            .find(|p| parse_net(p).is_none())
        {
            return Err(Error::config(
                "exempt.trusted_proxies",
                format!("{bad:?} is not a CIDR such as 10.0.0.0/8 or an IP address"),
            ));
        }
        let client_ip = ClientIp::new()
            .trust_proxies(&config.trusted_proxies)
            .header(config.forwarded_header);
        let headers = config
            .headers
            .iter()
            .map(|header| {
                let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                    Error::config(
                        "exempt.headers",
                        format!("{:?} is not a header name", header.name),
                    )
                })?;
                if header.values.is_empty() || header.values.iter().any(String::is_empty) {
                    return Err(Error::config(
                        "exempt.headers",
                        format!("{name} needs values, none of them empty"),
                    ));
                }
                let digests = header.values.iter().map(|v| digest(v.as_bytes())).collect();
                Ok((name, digests))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            nets,
            client_ip,
            headers,
            predicate,
        }))
    }

    /// Whether the request is exempt.
    pub(crate) fn matches(&self, parts: &Parts) -> bool {
        self.header_matches(parts)
            || self.ip_matches(parts)
            || self.predicate.as_ref().is_some_and(|p| p(parts))
    }

    /// A header counts only when it came exactly once: a client sending the
    /// exempt value beside its own is not exempt.
    fn header_matches(&self, parts: &Parts) -> bool {
        self.headers.iter().any(|(name, digests)| {
            let mut lines = parts.headers.get_all(name).iter();
            let (Some(value), None) = (lines.next(), lines.next()) else {
                return false;
            };
            let value = digest(value.as_bytes());
            // Every digest is compared, so the time says nothing of which.
            let found = digests
                .iter()
                .fold(subtle::Choice::from(0), |found, d| found | d.ct_eq(&value));
            bool::from(found)
        })
    }

    fn ip_matches(&self, parts: &Parts) -> bool {
        if self.nets.is_empty() {
            return false;
        }
        let ip = self.client_ip.client_ip(parts);
        ip.is_some_and(|ip| self.nets.iter().any(|net| net.contains(&ip)))
    }
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}
