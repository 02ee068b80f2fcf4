//! The telemetry batch check: how many events a batch holds, and how many
//! it was charged for.
//!
//! A telemetry batch is a JSON array of event objects, `[{…}, {…}]`, of at
//! most 1 MiB (`413` above that); what an event holds is the workers'
//! business. The limiter charges a batch, before its body is read, as many
//! requests as its `X-Event-Count` header says (1 without it); a count that
//! is not a whole number is a `400`, one that the limit could never admit a
//! `413`. The handler then counts the events in the body, and a batch that
//! does not hold exactly the number it was charged is refused with `400
//! {"error":"bad batch",…}` and not queued: a batch of more than one event
//! must declare them, and an undeclared, under- or over-declared batch, an
//! empty one, or a body that is not a UTF-8 JSON array of objects is
//! refused. What was charged stays charged. (With a policy file, the count
//! the body must match is what the file's telemetry `cost` charges: its
//! header's number, or a fixed cost.)

use std::fmt;

use axum::http::{HeaderMap, HeaderName};
use axum_redis_ratelimit::{config::CostConfig, cost::MAX_COST};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor},
};

use crate::config::StartupError;

/// The number of events in a batch: a UTF-8 JSON array of objects, counted
/// without building them. The message never quotes the body.
pub fn count_events(body: &[u8]) -> Result<u64, String> {
    const FORMAT: &str = "a batch is a JSON array of event objects";
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "the body is not UTF-8 (at byte {}): {FORMAT}",
            e.valid_up_to()
        )
    })?;
    let events: Vec<Event> = serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "not an array of event objects",
            serde_json::error::Category::Eof => "JSON that ends too early",
            _ => "not JSON",
        };
        format!(
            "the body is {what} (line {}, column {}): {FORMAT}",
            e.line(),
            e.column()
        )
    })?;
    Ok(events.len() as u64)
}

/// One event: any JSON object, skipped. (Zero-sized, so a `Vec` of them
/// allocates nothing.)
pub struct Event;

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Event;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Event)
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// What the telemetry policy charges a batch, in requests: the number of
/// events its body must hold.
#[derive(Clone)]
pub enum BatchCost {
    /// Every batch (a policy file's `cost = N`, or no `cost`: 1).
    Fixed(u64),
    /// The number in this header, 1 without it.
    Header(HeaderName),
}

impl BatchCost {
    /// What a policy file's telemetry `cost` charges.
    pub fn from_config(cost: Option<CostConfig>, path: &str) -> Result<Self, StartupError> {
        Ok(match cost {
            None => Self::Fixed(1),
            Some(CostConfig::Fixed(cost)) => Self::Fixed(cost),
            Some(CostConfig::Header { header }) => {
                Self::Header(HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    StartupError::new(
                        "POLICY_FILE",
                        format!("{path:?}: {header:?} is not a valid header name"),
                    )
                })?)
            }
            Some(other) => {
                return Err(StartupError::new(
                    "POLICY_FILE",
                    format!("{path:?}: the example cannot count batches for cost {other:?}"),
                ));
            }
        })
    }

    /// The charge, read as the limiter reads it (`Cost::header`): one line
    /// of at most 10 ASCII digits, from 1 to `MAX_COST`. The limiter has
    /// already refused any other value, unless there is no limiter.
    pub fn of(&self, headers: &HeaderMap) -> Result<u64, String> {
        let name = match self {
            Self::Fixed(cost) => return Ok(*cost),
            Self::Header(name) => name,
        };
        let mut values = headers.get_all(name).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(1),
            (Some(value), None) => Some(value.as_bytes())
                .filter(|digits| digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
                .filter(|count| (1..=MAX_COST).contains(count)),
            (Some(_), Some(_)) => None,
        };
        value.ok_or_else(|| format!("{name} must be one whole number from 1 to {MAX_COST}"))
    }
}
