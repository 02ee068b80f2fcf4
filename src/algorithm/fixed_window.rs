//! Fixed window: the twin of `fixed_window.lua` (Redis's expiry is the
//! window) and of `fixed_window_app_clock.lua` (the window's end is stored).
//!
//! A counter per key opens a window at the key's first request and expires
//! with it; at most `limit` requests are admitted per window. One integer per
//! key. Worst case: `2 × limit` within moments, `limit` at the very end of one
//! window and `limit` at the start of the next.

use super::{Entry, Limit, Verdict};

/// Decides over a counter (`None`: no such key or expired). State:
/// `[count]`, expiring at the window's end. The Redis store calls it too,
/// over the count and the time left that a script found.
pub(crate) fn decide(
    entry: Option<Entry>,
    now_us: u64,
    limit: &Limit,
    cost: u64,
) -> (Verdict, Option<Entry>) {
    let now = now_us / 1000;
    let (limit, window) = (limit.rate.limit(), limit.rate.window_ms());
    let (count, window_end) = match entry {
        Some(e) if e.expires_at_ms > now => (e.value[0], e.expires_at_ms),
        _ => (0, now + window),
    };
    let reset_us = (window_end - now) * 1000;
    if count + cost > limit {
        let verdict = Verdict::denied(limit.saturating_sub(count), reset_us, reset_us);
        return (verdict, None);
    }
    let state = Entry {
        value: [count + cost, 0, 0],
        expires_at_ms: window_end,
    };
    (
        Verdict::allowed(limit - count - cost, reset_us),
        Some(state),
    )
}

/// The scripts' refund over a live counter: the count given back; a count
/// that reaches zero drops the counter, as the scripts delete it (on Redis's
/// clock a counter of 0 would read as a new window).
pub(crate) fn refund(mut entry: Entry, cost: u64) -> Option<Entry> {
    entry.value[0] = entry.value[0].checked_sub(cost).filter(|&c| c > 0)?;
    Some(entry)
}
