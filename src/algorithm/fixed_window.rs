//! Fixed window: the Lua script and its in-memory twin.

use super::{Counter, Reply};

/// Runs in Redis via EVALSHA; see the file for its contract.
pub(crate) const SCRIPT: &str = include_str!("fixed_window.lua");

/// The script's logic over one in-memory counter (`None`: no such key).
pub(crate) fn apply(
    counter: &mut Option<Counter>,
    now_ms: u64,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> Reply {
    if counter.is_some_and(|c| c.expires_at_ms <= now_ms) {
        *counter = None;
    }
    let count = counter.map_or(0, |c| c.value);
    let allowed = count + cost <= limit;
    if allowed {
        let entry = counter.get_or_insert(Counter {
            value: 0,
            expires_at_ms: now_ms + window_ms,
        });
        entry.value += cost;
    }
    Reply {
        allowed,
        count: counter.map_or(0, |c| c.value),
        ttl_ms: counter.map_or(0, |c| c.expires_at_ms - now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_limit_then_denies_until_the_window_ends() {
        let mut counter = None;
        for i in 1..=3 {
            let reply = apply(&mut counter, 100 + i, 3, 1000, 1);
            assert_eq!((reply.allowed, reply.count), (true, i));
        }
        let denied = apply(&mut counter, 600, 3, 1000, 1);
        assert_eq!(
            denied,
            Reply {
                allowed: false,
                count: 3,
                ttl_ms: 501
            }
        );
        let last_ms = apply(&mut counter, 1100, 3, 1000, 1);
        assert_eq!(
            last_ms,
            Reply {
                allowed: false,
                count: 3,
                ttl_ms: 1
            }
        );
        let renewed = apply(&mut counter, 1101, 3, 1000, 1);
        assert_eq!(
            renewed,
            Reply {
                allowed: true,
                count: 1,
                ttl_ms: 1000
            }
        );
    }
}
