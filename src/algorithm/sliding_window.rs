//! Sliding window counter: the twin of `sliding_window.lua`.
//!
//! Windows are aligned to the Unix epoch. A request is admitted while
//! `previous × (overlap of the previous window) + current + cost ≤ limit`,
//! the weighted approximation of a sliding window. One small hash per key
//! (window index, current and previous count). Worst case: requests bunched
//! at the end of two consecutive windows can reach `2 × limit` within one
//! window's length, but never at a single boundary: a burst of `limit` just
//! before a boundary leaves almost no room just after it.

use super::{Entry, Limit, Verdict};

/// Decides over a counter (`None`: none, or expired). State: `[window
/// index, count, previous count]`, expiring two windows after the current
/// one opened. The Redis store calls it too, over the state a script found.
pub(crate) fn decide(
    entry: Option<Entry>,
    now_us: u64,
    limit: &Limit,
    cost: u64,
) -> (Verdict, Option<Entry>) {
    let (limit, window) = (limit.rate.limit(), limit.rate.window_ms());
    let stored = entry.map(|e| e.value);
    // A caller whose clock is behind the one that opened the stored window
    // counts in that window, at its start, and waits the difference too: a
    // newer window is never reset by an older clock.
    let behind = stored.map_or(0, |[w, ..]| (w * window).saturating_sub(now_us / 1000));
    let now = now_us / 1000 + behind;
    let index = now / window;
    let elapsed = now - index * window;
    let (mut c, mut p) = (0, 0);
    if let Some([w, count, previous]) = stored {
        if w == index {
            (c, p) = (count, previous);
        } else if w + 1 == index {
            (c, p) = (0, count);
        }
    }
    let weight = window - elapsed;
    let used = p * weight + c * window;
    let capacity = limit * window;
    let full_reset = (index + 2) * window - now;
    if used + cost * window <= capacity {
        let remaining = (capacity - used - cost * window) / window;
        let state = Entry {
            value: [index, c + cost, p],
            expires_at_ms: (index + 2) * window,
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
        // Signed, floored like Lua's `math.floor`: a cost above the limit
        // (never admitted) makes `limit - cost` negative.
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

/// The script's `refund` over a live counter: given back in the newest
/// window, never below zero.
pub(crate) fn refund(mut entry: Entry, cost: u64) -> Option<Entry> {
    entry.value[1] -= cost.min(entry.value[1]);
    Some(entry)
}
