//! Sliding window counter: the twin of `sliding_window.lua` (two integers
//! per limit; Redis's expiries are the clock) and of
//! `sliding_window_app_clock.lua` (the window's end is stored).
//!
//! A window opens at a key's first request and the next one follows on from
//! it, as long as the key is used. A request is admitted while `previous ×
//! (overlap of the previous window) + current + cost ≤ limit`, the weighted
//! approximation of a sliding window. Worst case: requests bunched at the end
//! of two consecutive windows can reach `2 × limit` within one window's
//! length, but never at a single boundary: a burst of `limit` just before a
//! boundary leaves almost no room just after it.

use super::{Entry, Limit, Verdict};

/// Decides over a counter (`None`: none, or expired). State: `[count,
/// previous count]`, expiring one window after the current window ends. The
/// Redis store calls it too, over the counts and the time left that a
/// script found.
pub(crate) fn decide(
    entry: Option<Entry>,
    now_us: u64,
    limit: &Limit,
    cost: u64,
) -> (Verdict, Option<Entry>) {
    let (limit, window) = (limit.rate.limit(), limit.rate.window_ms());
    let now = now_us / 1000;
    let (c, p, end) = window_at(entry, now, window);
    // A caller whose clock is behind the one that opened the window counts
    // at its start, and waits the difference too: a newer window is never
    // reset by an older clock.
    let behind = (end - now).saturating_sub(window);
    let elapsed = window - (end - now - behind);
    let weight = window - elapsed;
    let used = p * weight + c * window;
    let capacity = limit * window;
    let full_reset = 2 * window - elapsed;
    if used + cost * window <= capacity {
        let remaining = (capacity - used - cost * window) / window;
        let state = Entry {
            value: [c + cost, p, 0],
            expires_at_ms: end + window,
        };
        return (
            Verdict::allowed(remaining, (full_reset + behind) * 1000),
            Some(state),
        );
    }
    let reset = if c > 0 {
        full_reset
    } else if p > 0 {
        window - elapsed
    } else {
        0
    };
    let in_this_window = (c + cost <= limit && p > 0)
        .then(|| window - (limit - c - cost) * window / p)
        .filter(|&at| at < window)
        .map(|at| at - elapsed);
    let retry = in_this_window.unwrap_or_else(|| {
        // Signed, floored: a cost above the limit (never admitted) makes
        // `limit - cost` negative.
        let at = match c {
            0 => 0,
            c => {
                let room = (limit as i64 - cost as i64) * window as i64;
                (window as i64 - room.div_euclid(c as i64)).max(0) as u64
            }
        };
        window - elapsed + at
    });
    let remaining = capacity.saturating_sub(used) / window;
    let (reset, retry) = ((reset + behind) * 1000, (retry + behind) * 1000);
    (Verdict::denied(remaining, reset, retry), None)
}

/// The current window's count, the previous window's and when the current
/// window ends, at `now`: a counter whose window has ended holds the
/// previous count of the window after it.
fn window_at(entry: Option<Entry>, now: u64, window: u64) -> (u64, u64, u64) {
    match entry {
        Some(e) if e.expires_at_ms > now => {
            let end = e.expires_at_ms.saturating_sub(window);
            if end > now {
                (e.value[0], e.value[1], end)
            } else {
                (0, e.value[0], e.expires_at_ms)
            }
        }
        _ => (0, 0, now + window),
    }
}

/// The scripts' `refund` over a live counter: given back in the counter's
/// own window, never below zero; once that window has ended, its count is
/// the previous one and stays.
pub(crate) fn refund(mut entry: Entry, now_us: u64, limit: &Limit, cost: u64) -> Option<Entry> {
    if entry.expires_at_ms.saturating_sub(limit.rate.window_ms()) > now_us / 1000 {
        entry.value[0] -= cost.min(entry.value[0]);
    }
    Some(entry)
}
