//! The decision logic, kept apart from where counters live.
//!
//! Each algorithm is a Lua script that Redis runs (every limit of a policy
//! decided in one call, all or nothing) and, beside it, an in-memory twin
//! written against the same state. A script does only what must happen
//! inside Redis, atomically: it reads each limit's state, admits or not, and
//! writes; it returns the state it found, and the twin's `decide` computes
//! the headers' figures from it in the app, so that the arithmetic of
//! `remaining`, `reset` and `Retry-After` exists once, in Rust, and Redis's
//! CPU is spent on counting alone. The conformance tests feed both stores the
//! same sequences and require identical answers.
//!
//! | algorithm | state per limit | worst case over-admission |
//! |---|---|---|
//! | [`FixedWindow`](Algorithm::FixedWindow) | one integer whose expiry is the window (on the app's clock: a 2-field hash) | `2 × limit` within moments, at a window boundary |
//! | [`SlidingWindow`](Algorithm::SlidingWindow) | two integers whose expiries are the windows (on the app's clock: a 3-field hash) | `2 × limit` in one window's length, only when bunched at the ends of two windows; about `limit` across a boundary |
//! | [`Gcra`](Algorithm::Gcra) | one integer | none: at most `burst + t / T` in any span `t`, `T = window / limit` |
//!
//! An exact sliding log is not offered: it costs memory in proportion to the
//! limit per key (a sorted set of 1,000 timestamps for `1000/m`), and GCRA
//! already gives an exact bound at constant cost.

mod fixed_window;
mod gcra;
mod sliding_window;

use std::{num::NonZeroU64, time::Duration};

use serde::{Deserialize, Serialize};

use crate::Rate;

/// The counting algorithm of a policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// A counter per key opens a window at the key's first request and
    /// expires with it; at most `limit` requests per window. The EDR
    /// design notes' semantics, and the default.
    #[default]
    #[serde(alias = "fixed")]
    FixedWindow,
    /// Windows follow on from a key's first request; the previous window's
    /// count, weighted by its overlap with a window sliding back from now,
    /// counts too.
    #[serde(alias = "sliding")]
    SlidingWindow,
    /// A token bucket of `burst` requests refilled at the rate, stored as one
    /// timestamp: smooth, exact, and it allows bursts by design.
    Gcra,
}

impl Algorithm {
    /// The name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindow => "sliding_window",
            Self::Gcra => "gcra",
        }
    }

    /// The in-memory twin of the script's `decide`.
    pub(crate) fn decide(
        self,
        entry: Option<Entry>,
        now_us: u64,
        limit: &Limit,
        cost: u64,
    ) -> (Verdict, Option<Entry>) {
        match self {
            Self::FixedWindow => fixed_window::decide(entry, now_us, limit, cost),
            Self::SlidingWindow => sliding_window::decide(entry, now_us, limit, cost),
            Self::Gcra => gcra::decide(entry, now_us, limit, cost),
        }
    }

    /// The in-memory twin of the script's `refund`, over a counter that has
    /// not expired: the entry to keep, or `None` to drop it.
    pub(crate) fn refund(
        self,
        entry: Entry,
        now_us: u64,
        limit: &Limit,
        cost: u64,
    ) -> Option<Entry> {
        match self {
            Self::FixedWindow => fixed_window::refund(entry, cost),
            Self::SlidingWindow => sliding_window::refund(entry, now_us, limit, cost),
            Self::Gcra => gcra::refund(entry, now_us, limit, cost),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = crate::Error;

    /// The configuration names, and the short `fixed` and `sliding`.
    ///
    /// ```
    /// use axum_redis_ratelimit::Algorithm;
    ///
    /// assert_eq!("sliding".parse::<Algorithm>().unwrap(), Algorithm::SlidingWindow);
    /// assert_eq!(Algorithm::Gcra.to_string(), "gcra");
    /// assert!("leaky".parse::<Algorithm>().is_err());
    /// ```
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fixed_window" | "fixed" => Ok(Self::FixedWindow),
            "sliding_window" | "sliding" => Ok(Self::SlidingWindow),
            "gcra" => Ok(Self::Gcra),
            _ => Err(crate::Error::config(
                "algorithm",
                format!(
                    "{name:?} is not one of fixed_window (fixed), sliding_window (sliding), gcra"
                ),
            )),
        }
    }
}

/// One of the Lua scripts Redis runs: an algorithm's, on whose clock.
///
/// On Redis's clock no script reads a clock at all: each counter's own
/// Redis expiry is the clock (the fixed window's counter expires with its
/// window, the sliding window's one window later; a GCRA key holds its TAT
/// as the time to its expiry), so their scripts are about the least any
/// such limiter can do. On the app's clock they store times of that clock
/// instead, under keys of their own (see [`crate::key`]'s layout), so that
/// switching clocks never misreads a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    FixedWindow,
    FixedWindowAppClock,
    SlidingWindow,
    SlidingWindowAppClock,
    Gcra,
    GcraAppClock,
}

impl Script {
    pub(crate) const ALL: [Script; 6] = [
        Self::FixedWindow,
        Self::FixedWindowAppClock,
        Self::SlidingWindow,
        Self::SlidingWindowAppClock,
        Self::Gcra,
        Self::GcraAppClock,
    ];

    /// The script for `algorithm`; `app_clock`: the caller sends its time.
    pub(crate) fn of(algorithm: Algorithm, app_clock: bool) -> Self {
        match (algorithm, app_clock) {
            (Algorithm::FixedWindow, false) => Self::FixedWindow,
            (Algorithm::FixedWindow, true) => Self::FixedWindowAppClock,
            (Algorithm::SlidingWindow, false) => Self::SlidingWindow,
            (Algorithm::SlidingWindow, true) => Self::SlidingWindowAppClock,
            (Algorithm::Gcra, false) => Self::Gcra,
            (Algorithm::Gcra, true) => Self::GcraAppClock,
        }
    }

    /// The Lua source.
    pub(crate) fn source(self) -> &'static str {
        match self {
            Self::FixedWindow => include_str!("fixed_window.lua"),
            Self::FixedWindowAppClock => include_str!("fixed_window_app_clock.lua"),
            Self::SlidingWindow => include_str!("sliding_window.lua"),
            Self::SlidingWindowAppClock => include_str!("sliding_window_app_clock.lua"),
            Self::Gcra => include_str!("gcra.lua"),
            Self::GcraAppClock => include_str!("gcra_app_clock.lua"),
        }
    }

    /// The script's `ARGV` for a call of `cost` (0: a peek; negative: a
    /// refund) at `now_us` (the app's clock; `None`: Redis's), each limit's
    /// numbers after the call's own.
    pub(crate) fn args(
        self,
        now_us: Option<u64>,
        cost: i64,
        limits: &[Limit],
    ) -> impl Iterator<Item = i64> + '_ {
        let now = now_us.map_or(-1, |now| now as i64);
        let (head, len) = match self {
            Self::FixedWindow | Self::SlidingWindow => ([cost, 0], 1),
            Self::FixedWindowAppClock | Self::SlidingWindowAppClock => ([now, cost], 2),
            Self::Gcra => ([0, 0], 0),
            Self::GcraAppClock => ([now, 0], 1),
        };
        // Within `Limit::validate`'s bounds every product is below 2^51.
        let per_limit = move |limit: &Limit| {
            let (limit_n, window) = (limit.rate.limit() as i64, limit.rate.window_ms() as i64);
            match self {
                Self::Gcra | Self::GcraAppClock => {
                    let interval = limit.interval_us() as i64;
                    [cost * interval, interval * limit.burst() as i64]
                }
                Self::SlidingWindow => [window, limit_n * window],
                _ => [limit_n, window],
            }
        };
        head.into_iter()
            .take(len)
            .chain(limits.iter().flat_map(per_limit))
    }

    /// Each limit's verdict on a request of `cost` (0 for a peek), from the
    /// script's reply: the twin decides again over the state the script
    /// found, and where the script says whether a limit admitted the
    /// request, the two must agree. `None`: a reply of another shape, or a
    /// disagreement.
    pub(crate) fn verdicts(
        self,
        reply: &[i64],
        limits: &[Limit],
        cost: u64,
    ) -> Option<[Option<Verdict>; MAX_LIMITS]> {
        let n = limits.len();
        let at = |i: usize| reply.get(i).and_then(|&v| u64::try_from(v).ok());
        let mut verdicts = [None; MAX_LIMITS];
        let slots = verdicts.iter_mut().zip(limits).enumerate();
        match self {
            Self::FixedWindow | Self::FixedWindowAppClock => {
                // Per limit the count with this cost and the ms left in the
                // window (on Redis's clock packed in one integer, `count ×
                // (window + 1) + ms left`, as never more than the window is
                // left): decided at a time 0 at which the window ends then.
                let packed = self == Self::FixedWindow;
                (reply.len() == if packed { n } else { 2 * n }).then_some(())?;
                for (i, (slot, limit)) in slots {
                    let (count, left) = if packed {
                        let span = limit.rate.window_ms() + 1;
                        (at(i)? / span, at(i)? % span)
                    } else {
                        (at(2 * i)?, at(2 * i + 1)?)
                    };
                    let entry = Entry {
                        value: [count.checked_sub(cost)?, 0, 0],
                        expires_at_ms: left,
                    };
                    *slot = Some(fixed_window::decide(Some(entry), 0, limit, cost).0);
                }
            }
            Self::SlidingWindow | Self::SlidingWindowAppClock => {
                // Per limit the count with this cost, the previous count and
                // the ms left in the window: decided at a time 0 at which
                // the window ends then.
                (reply.len() == 3 * n).then_some(())?;
                for (i, (slot, limit)) in slots {
                    let entry = Entry {
                        value: [at(3 * i)?.checked_sub(cost)?, at(3 * i + 1)?, 0],
                        expires_at_ms: at(3 * i + 2)?.checked_add(limit.rate.window_ms())?,
                    };
                    *slot = Some(sliding_window::decide(Some(entry), 0, limit, cost).0);
                }
            }
            Self::Gcra | Self::GcraAppClock => {
                // Per limit how far the TAT lay ahead of now, −1 − that for a
                // limit that denied: decided at a time 0.
                (reply.len() == n).then_some(())?;
                for (i, (slot, limit)) in slots {
                    let (admitted, ahead) = match reply[i] {
                        a if a >= 0 => (true, a as u64),
                        a => (false, (-1 - a) as u64),
                    };
                    let entry = (ahead > 0).then_some(Entry {
                        value: [ahead, 0, 0],
                        expires_at_ms: u64::MAX,
                    });
                    let mut verdict = gcra::decide(entry, 0, limit, cost).0;
                    (verdict.allowed == admitted).then_some(())?;
                    if self == Self::Gcra {
                        // Redis's expiry counts whole milliseconds: so does
                        // the wait, rounded up, never early.
                        verdict.reset_us = verdict.reset_us.next_multiple_of(1000);
                        verdict.retry_us = verdict.retry_us.next_multiple_of(1000);
                    }
                    *slot = Some(verdict);
                }
            }
        }
        Some(verdicts)
    }
}

/// Most limits one policy may have; stores keep per-limit state on the stack.
pub const MAX_LIMITS: usize = 8;

/// One limit of a policy: a rate and, for GCRA, a burst size.
///
/// ```
/// use axum_redis_ratelimit::{algorithm::Limit, Rate};
///
/// use std::num::NonZeroU64;
///
/// let limit = Limit::new(Rate::per_second(10)).with_burst(NonZeroU64::new(20).unwrap());
/// assert_eq!(limit.burst(), 20);
/// assert_eq!(Limit::new(Rate::per_minute(1000)).burst(), 1000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub(crate) rate: Rate,
    pub(crate) burst: Option<NonZeroU64>,
}

impl From<Rate> for Limit {
    fn from(rate: Rate) -> Self {
        Self::new(rate)
    }
}

impl Limit {
    /// A limit at `rate`, with the default burst (the rate's limit).
    pub const fn new(rate: Rate) -> Self {
        Self { rate, burst: None }
    }

    /// This limit with a burst size: for [`Algorithm::Gcra`], how many
    /// requests may arrive at once.
    pub const fn with_burst(mut self, burst: NonZeroU64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The rate.
    pub const fn rate(&self) -> Rate {
        self.rate
    }

    /// The GCRA bucket size: the burst if set, else the rate's limit.
    pub fn burst(&self) -> u64 {
        self.burst.map_or(self.rate.limit(), NonZeroU64::get)
    }

    /// The quota `RateLimit-Policy` states for this limit, `(q, w in
    /// seconds)`: the rate, over a window stretched by a whole factor until
    /// it holds the GCRA burst (`5/s` with a burst of 10 is `q=10;w=2`), so
    /// that `q / w` is still the rate and `remaining` never exceeds `q`.
    pub fn quota(&self) -> (u64, u64) {
        let (limit, window) = (self.rate.limit(), self.rate.window().as_secs());
        let k = self.burst().div_ceil(limit).max(1);
        (limit.saturating_mul(k), window.saturating_mul(k))
    }

    /// The largest cost a single request can ever be allowed.
    pub fn capacity(&self, algorithm: Algorithm) -> u64 {
        match algorithm {
            Algorithm::Gcra => self.burst(),
            _ => self.rate.limit(),
        }
    }

    /// Checks the bounds within which both stores compute exactly: every
    /// product stays below 2^51, far inside Lua's exact integers (2^53).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming `<prefix>rate` or
    /// `<prefix>burst`.
    pub(crate) fn validate(&self, prefix: &str) -> Result<(), crate::Error> {
        let field = |name: &str| format!("{prefix}{name}");
        let (rate, exact) = (self.rate, 1u128 << 51);
        if u128::from(rate.limit()) * u128::from(rate.window_ms()) > exact {
            return Err(crate::Error::config(
                field("rate"),
                format!("{rate} is too large to count exactly; use a shorter window"),
            ));
        }
        if u128::from(self.interval_us()) * u128::from(self.burst()) > exact {
            return Err(crate::Error::config(
                field("burst"),
                format!("{} is too large for {rate}", self.burst()),
            ));
        }
        Ok(())
    }

    /// This limit with its rate and burst divided by `divisor`, at least 1.
    pub(crate) fn divided_by(&self, divisor: u64) -> Self {
        let divided = |n: u64| NonZeroU64::new(n / divisor).unwrap_or(NonZeroU64::MIN);
        let rate = Rate::new(divided(self.rate.limit()), self.rate.window())
            .expect("a smaller limit over the same window is valid");
        Self {
            rate,
            burst: self.burst.map(|b| divided(b.get())),
        }
    }

    /// GCRA's emission interval in whole microseconds, rounded up so it is
    /// never faster than the rate: `3/s` admits one request per 333,334 µs,
    /// so exact GCRA would admit at most one more request every 333 s.
    pub(crate) fn interval_us(&self) -> u64 {
        (self.rate.window_ms() * 1000).div_ceil(self.rate.limit())
    }
}

/// A counter as both stores keep it: up to three integers and when the key
/// expires (milliseconds since the Unix epoch, on the clock of the check that
/// wrote it; Redis is given the same expiry as a duration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    pub value: [u64; 3],
    pub expires_at_ms: u64,
}

/// One limit's answer, as `decide` returns it in both languages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub remaining: u64,
    pub reset_us: u64,
    pub retry_us: u64,
}

impl Verdict {
    pub(crate) fn allowed(remaining: u64, reset_us: u64) -> Self {
        Self {
            allowed: true,
            remaining,
            reset_us,
            retry_us: 0,
        }
    }

    pub(crate) fn denied(remaining: u64, reset_us: u64, retry_us: u64) -> Self {
        Self {
            allowed: false,
            remaining,
            reset_us,
            retry_us,
        }
    }
}

/// What a store decided for one request, reported for the most restrictive
/// of the policy's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether every limit had room (and the request was counted on all).
    pub allowed: bool,
    /// The reported limit's requests per window.
    pub limit: u64,
    /// The reported limit's window.
    pub window: Duration,
    /// Requests of cost 1 the reported limit still admits now.
    pub remaining: u64,
    /// Time until the reported limit is fully available again.
    pub reset_after: Duration,
    /// For a denied request, the earliest time after which the same request
    /// would be allowed (absent other traffic).
    pub retry_after: Option<Duration>,
}

impl Decision {
    fn new(limit: &Limit, verdict: Verdict) -> Self {
        Self {
            allowed: verdict.allowed,
            limit: limit.rate.limit(),
            window: limit.rate.window(),
            remaining: verdict.remaining,
            reset_after: Duration::from_micros(verdict.reset_us),
            retry_after: (!verdict.allowed).then(|| Duration::from_micros(verdict.retry_us)),
        }
    }

    /// Folds per-limit verdicts into the decision: allowed only if all are,
    /// reported for the limit that restricts most (the denial with the
    /// longest wait, else the fewest remaining).
    pub(crate) fn combine<'a>(
        verdicts: impl IntoIterator<Item = (&'a Limit, Verdict)>,
    ) -> Option<Self> {
        verdicts
            .into_iter()
            .map(|(limit, verdict)| Self::new(limit, verdict))
            .reduce(|a, b| {
                let allowed = a.allowed && b.allowed;
                let worst = match (a.allowed, b.allowed) {
                    (false, true) => a,
                    (true, false) => b,
                    (false, false) if a.retry_after >= b.retry_after => a,
                    (false, false) => b,
                    (true, true)
                        if (a.remaining, b.reset_after) <= (b.remaining, a.reset_after) =>
                    {
                        a
                    }
                    (true, true) => b,
                };
                Self { allowed, ..worst }
            })
    }
}

/// One limit of a client as a peek reads it, counting nothing: what
/// [`RedisStore::peek`](crate::RedisStore::peek) and
/// [`MemoryStore::peek`](crate::MemoryStore::peek) give for each limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitState {
    /// The limit.
    pub limit: Limit,
    /// The most one request can ever be allowed under it:
    /// [`Limit::capacity`], the burst for GCRA, else the rate's limit.
    pub capacity: u64,
    /// Requests of cost 1 it still admits now.
    pub remaining: u64,
    /// `capacity − remaining`, for display: what the client has spent of it.
    pub used: u64,
    /// Time until it is fully available again; zero when nothing is used.
    pub reset_after: Duration,
}

impl LimitState {
    /// The state a peek (`decide` with a cost of 0) found.
    pub(crate) fn new(limit: &Limit, algorithm: Algorithm, verdict: Verdict) -> Self {
        let capacity = limit.capacity(algorithm);
        let used = capacity.saturating_sub(verdict.remaining);
        Self {
            limit: *limit,
            capacity,
            remaining: verdict.remaining,
            used,
            reset_after: match used {
                0 => Duration::ZERO,
                _ => Duration::from_micros(verdict.reset_us),
            },
        }
    }

    /// The share of the capacity used, from 0 to 1.
    pub fn fraction_used(&self) -> f64 {
        self.used as f64 / self.capacity.max(1) as f64
    }
}

/// The system clock in microseconds since the Unix epoch, the unit of every
/// script's `now`.
pub(crate) fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Seconds as the HTTP headers carry them: rounded up, so that a client that
/// waits that long is never early, and at least 1.
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    us.div_ceil(1_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn seconds_round_up_and_are_never_zero() {
        for (us, secs) in [
            (0, 1),
            (1, 1),
            (999_999, 1),
            (1_000_000, 1),
            (1_000_001, 2),
            (59_999_000, 60),
        ] {
            assert_eq!(whole_seconds(Duration::from_micros(us)), secs, "{us}");
        }
    }

    fn run(
        algorithm: Algorithm,
        entry: &mut Option<Entry>,
        now_ms: u64,
        limit: Limit,
        cost: u64,
    ) -> Verdict {
        if entry.is_some_and(|e| e.expires_at_ms <= now_ms) {
            *entry = None;
        }
        let (verdict, state) = algorithm.decide(*entry, now_ms * 1000, &limit, cost);
        if let Some(state) = state {
            *entry = Some(state);
        }
        verdict
    }

    #[test]
    fn fixed_window_admits_the_limit_then_denies_until_the_window_ends() {
        let (limit, mut entry) = (Limit::new(Rate::per_second(3)), None);
        for i in 1..=3 {
            let v = run(Algorithm::FixedWindow, &mut entry, 100 + i, limit, 1);
            assert_eq!((v.allowed, v.remaining), (true, 3 - i));
        }
        let denied = run(Algorithm::FixedWindow, &mut entry, 600, limit, 1);
        assert_eq!(denied, Verdict::denied(0, 501_000, 501_000));
        assert!(!run(Algorithm::FixedWindow, &mut entry, 1100, limit, 1).allowed);
        let renewed = run(Algorithm::FixedWindow, &mut entry, 1101, limit, 1);
        assert_eq!(renewed, Verdict::allowed(2, 1_000_000));
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let (limit, mut entry) = (Limit::new(Rate::per_second(10)).with_burst(nz(3)), None);
        for remaining in [2, 1, 0] {
            assert_eq!(
                run(Algorithm::Gcra, &mut entry, 0, limit, 1).remaining,
                remaining
            );
        }
        let denied = run(Algorithm::Gcra, &mut entry, 0, limit, 1);
        assert_eq!(denied, Verdict::denied(0, 300_000, 100_000));
        assert!(!run(Algorithm::Gcra, &mut entry, 99, limit, 1).allowed);
        assert!(run(Algorithm::Gcra, &mut entry, 100, limit, 1).allowed);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let (limit, mut entry) = (Limit::new(Rate::per_second(10)), None);
        // The first request opens a window, [0.9 s, 1.9 s).
        assert!(run(Algorithm::SlidingWindow, &mut entry, 900, limit, 10).allowed);
        assert!(!run(Algorithm::SlidingWindow, &mut entry, 1899, limit, 1).allowed);
        // Half way through the next one, half of its 10 still count.
        let v = run(Algorithm::SlidingWindow, &mut entry, 2400, limit, 5);
        assert_eq!((v.allowed, v.remaining), (true, 0));
        let denied = run(Algorithm::SlidingWindow, &mut entry, 2400, limit, 1);
        assert!(!denied.allowed);
        // 10 × (1000 − e)/1000 + 5 + 1 ≤ 10 from e = 600 ms: 100 ms from now.
        assert_eq!(denied.retry_us, 100_000);
        assert!(run(Algorithm::SlidingWindow, &mut entry, 2500, limit, 1).allowed);
        // Two windows on, neither count matters.
        let fresh = run(Algorithm::SlidingWindow, &mut entry, 3900, limit, 10);
        assert_eq!((fresh.allowed, fresh.remaining), (true, 0));
    }

    /// A counter handed to the sliding window's twin as it expires (the
    /// stores drop expired ones first) is no counter: a fresh window, never
    /// the previous count of one that ends now.
    #[test]
    fn the_sliding_window_reads_a_counter_expiring_now_as_none() {
        let limit = Limit::new(Rate::per_second(10));
        let expiring = Entry {
            value: [4, 7, 0],
            expires_at_ms: 5_000,
        };
        let fresh = Algorithm::SlidingWindow.decide(None, 5_000_000, &limit, 10);
        let (verdict, state) =
            Algorithm::SlidingWindow.decide(Some(expiring), 5_000_000, &limit, 10);
        assert_eq!(verdict, fresh.0);
        assert_eq!(verdict, Verdict::allowed(0, 2_000_000));
        assert_eq!(
            state.map(|e| (e.value, e.expires_at_ms)),
            Some(([10, 0, 0], 7_000))
        );
    }

    /// A sliding window of 10 a second that runs from 4 s to 5 s, holding
    /// `current` and the previous window's `previous`, asked for `cost` at
    /// `now_ms`.
    fn sliding_at(current: u64, previous: u64, now_ms: u64, cost: u64) -> Verdict {
        let counter = Entry {
            value: [current, previous, 0],
            expires_at_ms: 6_000,
        };
        let limit = Limit::new(Rate::per_second(10));
        Algorithm::SlidingWindow
            .decide(Some(counter), now_ms * 1000, &limit, cost)
            .0
    }

    /// A caller whose clock is behind the one that opened the window (an
    /// app server on `Clock::App` 300 ms late) is counted at the window's
    /// start, and every wait it is told is longer by the difference: never
    /// early on the opener's clock.
    #[test]
    fn a_sliding_window_caller_behind_the_opener_counts_at_the_start_and_waits_longer() {
        // Opened at 4 s on the opener's clock; the caller's says 3.7 s.
        // The whole window and the next are still ahead of it: 2 s + 0.3 s.
        assert_eq!(sliding_at(3, 0, 3_700, 1), Verdict::allowed(6, 2_300_000));
        // Full: at 5.1 s the full window weighs 9 of 10, room for one; from
        // its 3.7 s that is 1.1 s, and 0.3 s more for its clock.
        assert_eq!(
            sliding_at(10, 0, 3_700, 1),
            Verdict::denied(0, 2_300_000, 1_400_000)
        );
    }

    /// Midway through a sliding window, an allowed request's reset is when
    /// its count stops weighing: the end of the window after this one, so
    /// less of it is left the later in the window the request comes.
    #[test]
    fn a_sliding_window_resets_when_the_next_window_ends() {
        // At 4.4 s the previous window's 5 weigh 0.6 × 5 = 3: 3 + 3 + 1
        // used, 3 left; the count weighs until 6 s, 1.6 s away.
        assert_eq!(sliding_at(3, 5, 4_400, 1), Verdict::allowed(3, 1_600_000));
        // At 4.9 s they weigh 0.1 × 5 = 0.5: 4.5 used, 5 left (5.5
        // floored), until 6 s.
        assert_eq!(sliding_at(3, 5, 4_900, 1), Verdict::allowed(5, 1_100_000));
    }

    /// A sliding window's denials: the reset is when what is counted stops
    /// weighing, the retry when the request would fit, for each shape of
    /// the state.
    #[test]
    fn a_sliding_window_denial_resets_when_its_counts_stop_weighing() {
        // Nothing counted in this window, a full previous one weighing 0.8 ×
        // 10 = 8 at 4.2 s: 3 do not fit. The previous count stops weighing
        // when this window ends, 0.8 s away; 3 fit once it weighs 7, at 4.3 s.
        assert_eq!(
            sliding_at(0, 10, 4_200, 3),
            Verdict::denied(2, 800_000, 100_000)
        );
        // 2 counted and the full previous 10 weighing 8 at 4.2 s: 6 more
        // fit in this window once the previous weighs 2, at 4.8 s. Reset
        // when this window's 2 stop weighing, at 6 s.
        assert_eq!(
            sliding_at(2, 10, 4_200, 6),
            Verdict::denied(0, 1_800_000, 600_000)
        );
        // 8 counted and a previous 5 weighing 2.5 at 4.5 s: 3 more never fit
        // this window (8 + 3 > 10). Reset when this window's 8 stop weighing,
        // at 6 s; the retry when the 8 weigh 7 at most, 0.125 s into the next.
        assert_eq!(
            sliding_at(8, 5, 4_500, 3),
            Verdict::denied(0, 1_500_000, 625_000)
        );
        // A key with nothing counted and a cost above the limit: nothing to
        // wait for to reset, and no retry within a window that helps.
        let limit = Limit::new(Rate::per_second(10));
        let fresh = Algorithm::SlidingWindow
            .decide(None, 4_500_000, &limit, 11)
            .0;
        assert_eq!(fresh, Verdict::denied(10, 0, 1_000_000));
    }

    /// A refund goes to the sliding window's current count only while its
    /// window runs: from the instant it ends, that count is the next
    /// window's previous one and stays as it is.
    #[test]
    fn a_sliding_window_refund_stops_when_its_window_ends() {
        let limit = Limit::new(Rate::per_second(10));
        // The window ends at 4 s; its counter expires a window later.
        let counter = Entry {
            value: [3, 5, 0],
            expires_at_ms: 5_000,
        };
        let refund = |now_ms: u64| {
            Algorithm::SlidingWindow
                .refund(counter, now_ms * 1000, &limit, 2)
                .map(|e| e.value)
        };
        assert_eq!(refund(3_999), Some([1, 5, 0]));
        assert_eq!(refund(4_000), Some([3, 5, 0]));
    }

    #[test]
    fn limits_are_bounded_where_both_stores_stop_being_exact() {
        // 1 s / 15,625 is exactly 64 µs, so a burst of 2^45 reaches 2^51.
        let rate = Rate::per_second(15_625);
        assert!(
            Limit::new(rate)
                .with_burst(nz(1 << 45))
                .validate("")
                .is_ok()
        );
        let err = Limit::new(rate).with_burst(nz((1 << 45) + 1)).validate("");
        assert!(err.unwrap_err().to_string().contains("burst"));
        // A day is 86,400,000 ms: above 26,062,497 a day, limit × window > 2^51.
        let err = Limit::new(Rate::per_day(26_062_498)).validate("");
        assert!(err.unwrap_err().to_string().contains("rate"));
        assert!(Limit::new(Rate::per_day(26_062_497)).validate("").is_ok());
    }

    #[test]
    fn the_quota_stretches_its_window_to_hold_a_burst() {
        let rate = Rate::per_second(5);
        assert_eq!(Limit::new(rate).quota(), (5, 1));
        assert_eq!(Limit::new(rate).with_burst(nz(3)).quota(), (5, 1));
        assert_eq!(Limit::new(rate).with_burst(nz(5)).quota(), (5, 1));
        assert_eq!(Limit::new(rate).with_burst(nz(6)).quota(), (10, 2));
        assert_eq!(
            Limit::new(Rate::per_minute(60)).with_burst(nz(121)).quota(),
            (180, 180)
        );
    }

    #[test]
    fn the_most_restrictive_limit_is_reported() {
        let second = Limit::new(Rate::per_second(10));
        let minute = Limit::new(Rate::per_minute(100));
        let d = Decision::combine([
            (&second, Verdict::allowed(9, 1)),
            (&minute, Verdict::allowed(3, 2)),
        ])
        .unwrap();
        assert_eq!((d.allowed, d.limit, d.remaining), (true, 100, 3));
        let d = Decision::combine([
            (&second, Verdict::denied(0, 1, 5)),
            (&minute, Verdict::allowed(3, 2)),
        ])
        .unwrap();
        assert_eq!(
            (d.allowed, d.limit, d.retry_after),
            (false, 10, Some(Duration::from_micros(5)))
        );
        let d = Decision::combine([
            (&second, Verdict::denied(0, 1, 5)),
            (&minute, Verdict::denied(0, 9, 9)),
        ])
        .unwrap();
        assert_eq!(
            (d.limit, d.retry_after),
            (100, Some(Duration::from_micros(9)))
        );
    }
}
