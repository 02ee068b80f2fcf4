//! Lease mode on Redis: one `EVALSHA` of `lease_fixed_window.lua` or
//! `lease_sliding_window.lua` (in `src/algorithm/`, beside the plain
//! scripts whose counters they share) per grant or give-back. As for the
//! plain scripts, the script returns the state it found and the algorithm's
//! twin turns it into the headers' figures.

use std::{sync::LazyLock, time::Duration};

use super::{RedisStore, push_keys};
use crate::{
    Algorithm, Decision, Error,
    algorithm::{Entry, Limit},
    lease::{LeaseCall, LeaseFuture, LeaseReply},
    store::{Charge, MAX_LIMITS},
};

const FIXED_WINDOW: &str = include_str!("../../algorithm/lease_fixed_window.lua");
const SLIDING_WINDOW: &str = include_str!("../../algorithm/lease_sliding_window.lua");

/// The two lease scripts, hashed once.
static SCRIPTS: LazyLock<[redis::Script; 2]> = LazyLock::new(|| {
    [
        redis::Script::new(FIXED_WINDOW),
        redis::Script::new(SLIDING_WINDOW),
    ]
});

impl RedisStore {
    /// The script call for `call`, to be awaited.
    pub(super) fn lease_call(&self, call: LeaseCall<'_>) -> LeaseFuture {
        let (evalsha, source) = match evalsha(&call) {
            Ok(prepared) => prepared,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let script = self.call(source, evalsha);
        let (algorithm, cost, n) = (call.algorithm, call.cost, call.limits.len());
        let mut limits = [call.limits[0]; MAX_LIMITS];
        limits[..n].copy_from_slice(call.limits);
        Box::pin(async move {
            let reply = script.send().await?;
            let limits = &limits[..n];
            parse(algorithm, limits, cost, &reply)
                .ok_or_else(|| Error::UnexpectedReply(format!("{reply:?}")))
        })
    }
}

/// The `EVALSHA` of `call` and its script's source, or why it cannot be
/// made.
fn evalsha(call: &LeaseCall<'_>) -> Result<(redis::Cmd, &'static str), Error> {
    let charge = Charge {
        key: call.key,
        limits: call.limits,
        algorithm: call.algorithm,
        cost: call.cost.max(1),
        now_us: None,
    };
    charge.validate()?;
    let (script, source) = match call.algorithm {
        Algorithm::FixedWindow => (&SCRIPTS[0], FIXED_WINDOW),
        Algorithm::SlidingWindow => (&SCRIPTS[1], SLIDING_WINDOW),
        other => {
            return Err(Error::config(
                "lease",
                format!("{other} has no lease script: fixed_window and sliding_window have"),
            ));
        }
    };
    if call.windows.len() != call.limits.len() {
        return Err(Error::config(
            "lease",
            "a give-back names one window per limit",
        ));
    }
    let n = call.limits.len();
    let mut evalsha = redis::Cmd::with_capacity(7 + 5 * n, 128 + n * (2 * call.key.len() + 120));
    evalsha.arg("EVALSHA").arg(script.get_hash());
    // The plain mode's counters, on the store's clock.
    push_keys(&charge, &mut evalsha);
    evalsha
        .arg(call.cost)
        .arg(call.want.max(call.cost))
        .arg(call.instances.max(1))
        .arg(call.give_back);
    for (limit, window) in call.limits.iter().zip(call.windows) {
        evalsha
            .arg(limit.rate().limit())
            .arg(limit.rate().window_ms())
            .arg(*window);
    }
    Ok((evalsha, source))
}

/// Each limit's verdict and what was granted, into a reply; `None` if the
/// twin's verdicts disagree with the script's grant.
fn reply(
    granted: u64,
    cost: u64,
    verdicts: impl IntoIterator<Item = (Limit, crate::algorithm::Verdict)>,
    windows: [u64; MAX_LIMITS],
    window_left: [Duration; MAX_LIMITS],
    credited: [u64; MAX_LIMITS],
) -> Option<LeaseReply> {
    let decision = match cost {
        0 => None,
        _ => {
            let verdicts: Vec<_> = verdicts.into_iter().collect();
            let decision = Decision::combine(verdicts.iter().map(|(l, v)| (l, *v)))?;
            let consistent = decision.allowed == (granted > 0) && (granted == 0 || granted >= cost);
            consistent.then_some(decision)?;
            Some(decision)
        }
    };
    Some(LeaseReply::new(
        granted,
        decision,
        windows,
        window_left,
        credited,
    ))
}

/// `{granted, then per limit: credited, the state the script found, ms left
/// in the window, expiry}`; the state is the count with the grant (fixed
/// window) or the count and the previous count before it (sliding window).
fn parse(algorithm: Algorithm, limits: &[Limit], cost: u64, r: &[i64]) -> Option<LeaseReply> {
    let (n, per) = (limits.len(), state_len(algorithm) + 3);
    (r.len() == 1 + per * n).then_some(())?;
    let at = |i: usize| u64::try_from(r[i]).ok();
    let granted = at(0)?;
    let (mut windows, mut left, mut credited) = (
        [0; MAX_LIMITS],
        [Duration::ZERO; MAX_LIMITS],
        [0; MAX_LIMITS],
    );
    let mut verdicts = Vec::with_capacity(n);
    for (i, limit) in limits.iter().enumerate() {
        let o = 1 + per * i;
        credited[i] = at(o)?;
        if cost == 0 {
            continue;
        }
        let (ttl, expiry) = (at(o + per - 2)?, at(o + per - 1)?);
        // Decided again by the twin, at a time 0 at which the window ends
        // `ttl` ms later, over the state the script found.
        let entry = if algorithm == Algorithm::FixedWindow {
            let found = at(o + 1)?.checked_sub(granted)?;
            (found > 0).then_some(Entry {
                value: [found, 0, 0],
                expires_at_ms: ttl,
            })
        } else {
            // The counter outlives its window by one more.
            Some(Entry {
                value: [at(o + 1)?, at(o + 2)?, 0],
                expires_at_ms: ttl.checked_add(limit.rate().window_ms())?,
            })
        };
        let units = if granted > 0 { granted } else { cost };
        verdicts.push((*limit, algorithm.decide(entry, 0, limit, units).0));
        if granted > 0 {
            windows[i] = expiry;
            left[i] = Duration::from_millis(ttl);
        }
    }
    reply(granted, cost, verdicts, windows, left, credited)
}

/// How many numbers of state a lease script returns per limit.
fn state_len(algorithm: Algorithm) -> usize {
    if algorithm == Algorithm::FixedWindow {
        1
    } else {
        2
    }
}
