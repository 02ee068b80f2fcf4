//! [`Rate`]: how many requests a key may make per window.
//!
//! The text form is the one django-ratelimit uses, so policies can be copied
//! from a Django project as they are: `N/u` or `N/Ku`, where `u` is one of
//! `s`, `m`, `h`, `d` and `K` multiplies the unit (`"100/10s"` is 100 requests
//! per 10 seconds).

use std::{fmt, num::NonZeroU64, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A number of requests per window, such as `1000/m`.
///
/// ```
/// use axum_redis_ratelimit::Rate;
/// use std::time::Duration;
///
/// let rate: Rate = "100/10s".parse().unwrap();
/// assert_eq!(rate.limit(), 100);
/// assert_eq!(rate.window(), Duration::from_secs(10));
/// assert_eq!(rate.to_string(), "100/10s");
/// assert_eq!(Rate::per_minute(1000), "1000/m".parse().unwrap());
/// assert!("0/m".parse::<Rate>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    limit: NonZeroU64,
    window_secs: u64,
}

/// Windows longer than this would overflow the millisecond arithmetic that
/// both stores do; a year is far beyond any sensible rate-limit window.
const MAX_WINDOW_SECS: u64 = 366 * 86_400;

impl Rate {
    /// `limit` requests per `window`. Sub-second parts of `window` are ignored.
    ///
    /// # Errors
    /// When the window is shorter than a second or longer than a year.
    ///
    /// ```
    /// use axum_redis_ratelimit::Rate;
    /// use std::{num::NonZeroU64, time::Duration};
    ///
    /// let limit = NonZeroU64::new(10).unwrap();
    /// let rate = Rate::new(limit, Duration::from_secs(90)).unwrap();
    /// assert_eq!(rate.to_string(), "10/90s");
    /// ```
    pub fn new(limit: NonZeroU64, window: Duration) -> Result<Self, Error> {
        Self::checked(limit.get(), window.as_secs(), || {
            format!("{limit}/{window:?}")
        })
    }

    fn checked(
        limit: u64,
        window_secs: u64,
        input: impl FnOnce() -> String,
    ) -> Result<Self, Error> {
        let Some(limit) = NonZeroU64::new(limit) else {
            return Err(Error::invalid_rate(input(), "the limit must be at least 1"));
        };
        if window_secs == 0 {
            return Err(Error::invalid_rate(
                input(),
                "the window must be at least 1s",
            ));
        }
        if window_secs > MAX_WINDOW_SECS {
            return Err(Error::invalid_rate(
                input(),
                "the window must be at most 366d",
            ));
        }
        Ok(Self { limit, window_secs })
    }

    /// `limit` requests per second.
    ///
    /// # Panics
    /// When `limit` is zero, a programming error: in a `const` or `static`
    /// it fails the build. [`Rate::new`] takes a [`NonZeroU64`] instead.
    pub const fn per_second(limit: u64) -> Self {
        Self::per(limit, 1)
    }

    /// `limit` requests per minute. Panics when `limit` is zero.
    pub const fn per_minute(limit: u64) -> Self {
        Self::per(limit, 60)
    }

    /// `limit` requests per hour. Panics when `limit` is zero.
    pub const fn per_hour(limit: u64) -> Self {
        Self::per(limit, 3_600)
    }

    /// `limit` requests per day. Panics when `limit` is zero.
    pub const fn per_day(limit: u64) -> Self {
        Self::per(limit, 86_400)
    }

    const fn per(limit: u64, window_secs: u64) -> Self {
        let Some(limit) = NonZeroU64::new(limit) else {
            panic!("a rate limit must allow at least one request");
        };
        Self { limit, window_secs }
    }

    /// Requests allowed per window.
    pub const fn limit(&self) -> u64 {
        self.limit.get()
    }

    /// Length of the window.
    pub const fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// Length of the window in milliseconds, the unit both stores count in.
    pub(crate) const fn window_ms(&self) -> u64 {
        self.window_secs * 1000
    }
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |why: &'static str| Error::invalid_rate(input, why);
        let (limit, period) = input
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected N/unit, such as 1000/m or 100/10s"))?;
        let limit: u64 =
            parse_number(limit).ok_or_else(|| bad("the limit is not a whole number"))?;
        let unit = period
            .chars()
            .last()
            .ok_or_else(|| bad("the unit is missing: use s, m, h or d"))?;
        let unit_secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad("unknown unit: use s, m, h or d")),
        };
        let multiplier = &period[..period.len() - unit.len_utf8()];
        let multiplier = if multiplier.is_empty() {
            1
        } else {
            parse_number(multiplier)
                .ok_or_else(|| bad("the unit multiplier is not a whole number"))?
        };
        let window_secs = multiplier
            .checked_mul(unit_secs)
            .ok_or_else(|| bad("the window is too long"))?;
        Self::checked(limit, window_secs, || input.to_owned())
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (count, unit) = [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')]
            .into_iter()
            .find(|(secs, _)| self.window_secs.is_multiple_of(*secs))
            .map(|(secs, unit)| (self.window_secs / secs, unit))
            .unwrap_or((self.window_secs, 's'));
        if count == 1 {
            write!(f, "{}/{unit}", self.limit)
        } else {
            write!(f, "{}/{count}{unit}", self.limit)
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_django_ratelimit_forms() {
        for (text, limit, secs) in [
            ("1000/m", 1000, 60),
            ("5/h", 5, 3600),
            ("100/10s", 100, 10),
            ("50000/d", 50000, 86400),
            ("1/s", 1, 1),
            ("7/2h", 7, 7200),
            (" 3/m ", 3, 60),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                (rate.limit(), rate.window().as_secs()),
                (limit, secs),
                "{text}"
            );
        }
    }

    #[test]
    fn display_round_trips_and_uses_the_largest_unit() {
        for text in [
            "1000/m", "5/h", "100/10s", "50000/d", "3/90s", "4/2d", "1/s",
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_string(), text);
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate);
        }
        assert_eq!("9/60s".parse::<Rate>().unwrap().to_string(), "9/m");
    }

    #[test]
    fn bad_rates_are_errors_that_quote_the_input() {
        for text in [
            "",
            "/",
            "0/m",
            "10",
            "10/",
            "10/x",
            "abc/m",
            "10/0s",
            "-1/m",
            "+1/m",
            "1.5/m",
            "10/m/s",
            "99999999999999999999/m",
            "1/99999999999999999d",
            "1/400d",
            "1/ms",
            "1/é",
        ] {
            let err = text.parse::<Rate>().unwrap_err();
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn typed_constructors_match_the_text_form() {
        assert_eq!(Rate::per_second(10), "10/s".parse().unwrap());
        assert_eq!(Rate::per_minute(1000), "1000/m".parse().unwrap());
        assert_eq!(Rate::per_hour(5), "5/h".parse().unwrap());
        assert_eq!(Rate::per_day(50000), "50000/d".parse().unwrap());
        assert!(Rate::new(NonZeroU64::MIN, Duration::from_millis(10)).is_err());
        assert!(Rate::new(NonZeroU64::MIN, Duration::from_secs(366 * 86_400 + 1)).is_err());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let rate: Rate = serde_json::from_str("\"100/10s\"").unwrap();
        assert_eq!(serde_json::to_string(&rate).unwrap(), "\"100/10s\"");
        let err = serde_json::from_str::<Rate>("\"10/w\"").unwrap_err();
        assert!(err.to_string().contains("\"10/w\""), "{err}");
    }
}
