//! [`Cost`]: how many requests one request counts as.

use std::{fmt, sync::Arc};

use http::{HeaderName, request::Parts};

use crate::Error;

type CostFn = dyn Fn(&Parts) -> Result<u64, String> + Send + Sync;

/// How many requests one request counts as: 1 by default, or, for a batch
/// endpoint, the number of items it carries.
///
/// A cost that cannot be read is a `400` naming the problem; a cost above
/// what a limit can ever admit is a `413`, since no `Retry-After` would be
/// true.
///
/// ```
/// use axum_redis_ratelimit::Cost;
///
/// // An agent's telemetry batch declares its number of events.
/// let cost = Cost::header("X-Event-Count");
/// ```
#[derive(Clone)]
pub struct Cost(Source);

#[derive(Clone)]
enum Source {
    Fixed(u64),
    Header(HeaderName),
    Custom(Arc<CostFn>),
    Invalid(String),
}

impl Default for Cost {
    fn default() -> Self {
        Self::fixed(1)
    }
}

/// Largest cost a header may state: far above any real batch, far below
/// the precision limits of the stores' arithmetic.
pub const MAX_COST: u64 = u32::MAX as u64;

impl Cost {
    /// Every request costs `cost` (at least 1).
    pub fn fixed(cost: u64) -> Self {
        if cost == 0 {
            return Self(Source::Invalid(
                "a fixed cost must be at least 1".to_owned(),
            ));
        }
        Self(Source::Fixed(cost))
    }

    /// The whole number in this header; 1 when the header is absent.
    pub fn header(name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Self(Source::Header(name)),
            Err(_) => Self(Source::Invalid(format!(
                "{name:?} is not a valid header name"
            ))),
        }
    }

    /// Any cost computed from the request head; an `Err` is answered with
    /// `400` and its message.
    pub fn from_fn<F>(cost: F) -> Self
    where
        F: Fn(&Parts) -> Result<u64, String> + Send + Sync + 'static,
    {
        Self(Source::Custom(Arc::new(cost)))
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), Error> {
        match &self.0 {
            Source::Invalid(reason) => Err(Error::config(field, reason.clone())),
            _ => Ok(()),
        }
    }

    /// The cost of every request, when it is fixed.
    pub(crate) fn fixed_value(&self) -> Option<u64> {
        match self.0 {
            Source::Fixed(cost) => Some(cost),
            _ => None,
        }
    }

    /// The cost of a request, at least 1.
    pub(crate) fn of(&self, parts: &Parts) -> Result<u64, String> {
        let cost = match &self.0 {
            Source::Fixed(cost) => return Ok(*cost),
            Source::Header(name) => {
                let mut values = parts.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => return Ok(1),
                    (Some(value), None) => parse(value.as_bytes()),
                    (Some(_), Some(_)) => None,
                }
                .ok_or_else(|| format!("{name} must be one whole number from 1 to {MAX_COST}"))?
            }
            Source::Custom(cost) => cost(parts)?,
            Source::Invalid(reason) => return Err(reason.clone()),
        };
        if cost == 0 {
            return Err("a request costs at least 1".to_owned());
        }
        Ok(cost)
    }
}

/// ASCII digits only, no sign, no spaces, at most [`MAX_COST`].
fn parse(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = bytes.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (1..=MAX_COST).contains(&value).then_some(value)
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Fixed(cost) => write!(f, "Cost::fixed({cost})"),
            Source::Header(name) => write!(f, "Cost::header({name:?})"),
            Source::Custom(_) => f.write_str("Cost::from_fn(..)"),
            Source::Invalid(reason) => write!(f, "Cost::invalid({reason:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost_of(cost: &Cost, values: &[&[u8]]) -> Result<u64, String> {
        let mut request = http::Request::new(());
        for value in values {
            request.headers_mut().append(
                "x-event-count",
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        cost.of(&request.into_parts().0)
    }

    #[test]
    fn a_header_states_the_cost() {
        let cost = Cost::header("X-Event-Count");
        assert_eq!(cost_of(&cost, &[]), Ok(1));
        assert_eq!(cost_of(&cost, &[b"25"]), Ok(25));
        assert_eq!(cost_of(&cost, &[b"4294967295"]), Ok(MAX_COST));
        for bad in [
            &b"0"[..],
            b"-1",
            b"+1",
            b" 1",
            b"1.5",
            b"abc",
            b"",
            b"4294967296",
            b"\xff",
        ] {
            let err = cost_of(&cost, &[bad]).unwrap_err();
            assert!(err.contains("x-event-count must be"), "{err}");
        }
        assert!(cost_of(&cost, &[b"1", b"2"]).is_err());
    }

    #[test]
    fn fixed_and_custom_costs() {
        assert_eq!(cost_of(&Cost::fixed(3), &[]), Ok(3));
        assert!(Cost::fixed(0).validate("cost").is_err());
        assert!(Cost::header("a b").validate("cost").is_err());
        let custom = Cost::from_fn(|_| Err("no".to_owned()));
        assert_eq!(cost_of(&custom, &[]), Err("no".to_owned()));
    }
}
