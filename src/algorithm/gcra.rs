//! GCRA, a token bucket kept as one timestamp: the twin of `gcra.lua`.
//!
//! The rate sets the emission interval `T = window / limit` (rounded up to a
//! microsecond, so never faster than the rate); `burst` (default: the limit)
//! is how many requests may arrive at once. In any span of length `t` at
//! most `burst + t / T` requests are admitted. One integer per key.

use super::{Entry, Limit, Verdict};

/// Decides over a TAT (`None`: no such key, or it expired, which means the
/// same). The Redis store calls it too, over the TAT a script found.
pub(crate) fn decide(
    entry: Option<Entry>,
    now: u64,
    limit: &Limit,
    cost: u64,
) -> (Verdict, Option<Entry>) {
    let interval = limit.interval_us();
    let tolerance = interval * limit.burst();
    let tat = entry.map_or(0, |e| e.value[0]).max(now);
    let new_tat = tat + cost * interval;
    let allow_at = new_tat - tolerance.min(new_tat);
    if allow_at > now {
        let remaining = (now + tolerance).saturating_sub(tat) / interval;
        return (Verdict::denied(remaining, tat - now, allow_at - now), None);
    }
    let remaining = (now + tolerance - new_tat) / interval;
    // As the script: a key outlives its TAT by up to the tolerance, so that
    // a busy key's expiry is renewed about once a tolerance.
    let expires_at_ms = match entry {
        Some(e) if e.expires_at_ms.saturating_mul(1000) >= new_tat + 1000 => e.expires_at_ms,
        _ => (new_tat + tolerance) / 1000 + 1,
    };
    let state = Entry {
        value: [new_tat, 0, 0],
        expires_at_ms,
    };
    (Verdict::allowed(remaining, new_tat - now), Some(state))
}

/// The script's `refund` over a live TAT: moved back `cost` intervals, not
/// past now; `None` once it has passed (the same as no key). The expiry
/// stays: it outlives the earlier TAT.
pub(crate) fn refund(entry: Entry, now: u64, limit: &Limit, cost: u64) -> Option<Entry> {
    let tat = entry.value[0];
    let new_tat = tat
        .saturating_sub(cost.saturating_mul(limit.interval_us()))
        .max(now);
    (new_tat > now).then_some(Entry {
        value: [new_tat, 0, 0],
        ..entry
    })
}
